"""How far do honest updates clear the validators' assigned-batches check, and how far do updates trained on
other data (val-overfit: the public validation split) fall short? Measured in one process on a manifest (default
the embedded configs/tiny.yaml).

A miner's batches follow from its id and the cycle, so a validator can list the blocks of its first 8 inner steps
(swarm.roles.validator.assigned_batches). An update trained on them gains more there than on data it never saw;
the check asks for that excess to be `data.assigned_z` standard errors over the update's gain on the scoring data.
An in-process swarm of honest miners (the project's own train_submission, moments kept, the outer step on every
honest update) walks through `--cycles` cycles; at each start state val-overfit miners train with the same code
and H on the public validation split. Every update is judged against `--validators` private held-out sets (fresh
math from a seed of their own, as swarm.simulate makes them) and the z each reaches is recorded.

    python scripts/assigned_check.py --out teft/assets/studies/assigned_check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from overfit_check import heldout_blocks, load_tiny, swarm_updates  # noqa: E402

from swarm.roles.validator import ASSIGNED_CHECK_STEPS, assigned_batches, overfit_gap, validation_batches  # noqa: E402
from teft.pol import state_block_losses  # noqa: E402


def gains(rt, base, state, batches: list[torch.Tensor]) -> torch.Tensor:
    return state_block_losses(rt.model, rt.layout, base, batches) - state_block_losses(rt.model, rt.layout, state,
                                                                                        batches)


def collect(rt, cycles: int, miners: int, overfitters: int, validators: int) -> list[dict]:
    heldout = [heldout_blocks(rt, f"v{v}") for v in range(validators)]
    rows, start = [], time.time()
    for cycle, state, updates in swarm_updates(rt, cycles, miners, overfitters):
        for v, private in enumerate(heldout):
            scoring = validation_batches(rt, f"assigned-check/{cycle}/{v}".encode(), private)
            for (kind, name), upd in updates.items():
                own, score, z = overfit_gap(gains(rt, state, upd, assigned_batches(rt, name, cycle)),
                                            gains(rt, state, upd, scoring))
                rows.append({"cycle": cycle, "validator": v, "kind": kind, "miner": name, "own_gain": own,
                             "scoring_gain": score, "z": z})
        print(f"cycle {cycle}: {len(updates)} updates x {validators} validators [{time.time() - start:.0f}s]",
              flush=True)
        start = time.time()
    return rows


def summary(rows: list[dict], need: float) -> dict:
    out = {}
    for kind in sorted({r["kind"] for r in rows}):
        zs = sorted(r["z"] for r in rows if r["kind"] == kind)
        excess = [r["own_gain"] - r["scoring_gain"] for r in rows if r["kind"] == kind]
        out[kind] = {"n": len(zs), "z_min": zs[0], "z_median": zs[len(zs) // 2], "z_max": zs[-1],
                     "excess_mean": sum(excess) / len(excess), "zeroed": sum(z < need for z in zs),
                     "zeroed_rate": sum(z < need for z in zs) / len(zs)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--cycles", type=int, default=6, help="swarm cycles (default 6, tiny.yaml's schedule)")
    parser.add_argument("--miners", type=int, default=8, help="honest miners per cycle (default 8)")
    parser.add_argument("--overfitters", type=int, default=2, help="val-overfit miners per cycle (default 2)")
    parser.add_argument("--validators", type=int, default=2, help="private held-out sets (default 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/assigned_check", help="output stem: STEM.json and STEM.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    rt = load_tiny(args.config)
    need = rt.manifest.data.assigned_z
    rows = collect(rt, args.cycles, args.miners, args.overfitters, args.validators)
    result = {"command": " ".join(["python", *sys.argv]), "seconds": round(time.time() - start),
              "assigned_z": need, "check_steps": min(ASSIGNED_CHECK_STEPS, rt.manifest.inner.steps),
              "summary": summary(rows, need), "judgements": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# The assigned-batches check on {args.config}", "",
             f"`{result['command']}` ({result['seconds']} s). Each update's gain on the blocks of its own first "
             f"{result['check_steps']} inner steps against its gain on a validator's private scoring subset, in "
             f"standard errors of their difference; the manifest asks for {need:g}.", "",
             "| updates | judgements | z min | z median | z max | own gain - scoring gain (mean, nats) | zeroed |",
             "|---|---|---|---|---|---|---|"]
    for kind, s in result["summary"].items():
        lines.append(f"| {kind} | {s['n']} | {s['z_min']:.2f} | {s['z_median']:.2f} | {s['z_max']:.2f} | "
                     f"{s['excess_mean']:.4f} | {s['zeroed']} of {s['n']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
