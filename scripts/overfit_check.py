"""How often does the validators' overfit check zero an honest miner, and how often does it catch one that
trained on the public validation split? Measured in one process on the embedded default (tiny, math).

An in-process swarm of honest miners (the project's own `train_submission`, the manifest's inner loop, moments
kept, the outer step on every honest update) walks through `--cycles` cycles. At each cycle's start state it
also trains, with the same code and H:
  - val-overfit: what the adversary does, the public validation split as its training data;
  - memorizer: the worst case the check exists for, a miner that trained on the very public blocks the check
    measures (as if it had predicted the seed), 24 steps, scaled under max_delta_norm like the adversary.
Every update is judged as a validator judges it, under `--seeds` evaluation seeds and `--heldout` validators'
private held-out sets (fresh math from a seed of their own, as `swarm.simulate` makes them): per-block losses on
the scoring subset (validation_blocks of held-out data) and on the public check subset (a quarter as many
blocks of the public split). Each rule below is then applied to the same judgements:
  - ratio:    zero if public gain > r x held-out gain + s (the rule before this study: r 2, s 0.01);
  - z/margin: zero if the public gain is over r x the held-out gain + s, and that excess is either over
              `margin` nats or the two gains are over z standard errors of their difference apart (from the
              blocks' spread). Validators apply z 4 with no margin (swarm.roles.validator.overfit_flag).

    python scripts/overfit_check.py --rescore teft/assets/studies/overfit_check.json   # the rules again, no training

    python scripts/overfit_check.py --threads 1 --out teft/assets/studies/overfit_check
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from swarm.protocol.runtime import Runtime  # noqa: E402
from swarm.roles.miner import train_submission  # noqa: E402
from swarm.roles.validator import OVERFIT_CHECK_SHARE, overfit_flag, validation_batches  # noqa: E402
from swarm.sim.adversaries.overfit import NORM_MARGIN, within_norm  # noqa: E402
from teft.codec import apply_delta  # noqa: E402
from teft.data import tokenize_blocks  # noqa: E402
from teft.outer import NesterovOuter, outer_step  # noqa: E402
from teft.pol import state_block_losses  # noqa: E402

MEMORIZER_STEPS = 24  # as tests/test_validator.py's worst case
MEMORIZER_SEEDS = 3  # the memorizer trains for this many seeds per cycle (its training data is the seed's subset)


def load_tiny(config: str) -> Runtime:
    from swarm.launch import write_manifest
    from swarm.net.identity import load_or_create
    from swarm.protocol.manifest import load
    from swarm.protocol.runtime import load_runtime

    with tempfile.TemporaryDirectory() as tmp:
        key = load_or_create(Path(tmp) / "k.key").public_key_str
        return load_runtime(load(write_manifest(config, Path(tmp) / "run.yaml", [key], 0, {"quorum": 1})))


def heldout_blocks(rt: Runtime, seed: str) -> torch.Tensor:
    """A validator's private held-out data as swarm.simulate makes it (scripts/build_corpora.heldout_math)."""
    spec = importlib.util.spec_from_file_location("build_corpora", ROOT / "scripts" / "build_corpora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    texts = module.heldout_math(f"overfit-check/{seed}")
    return tokenize_blocks(rt.tokenizer, texts, rt.manifest.data.seq_len, rt.manifest.data.validation_tokens)


def with_train_blocks(rt: Runtime, blocks: torch.Tensor, steps: int | None = None) -> Runtime:
    out = copy.copy(rt)
    out.train_blocks = blocks
    if steps:
        out.manifest = rt.manifest.model_copy(update={"inner": rt.manifest.inner.model_copy(update={"steps": steps})})
    return out


def judgements(rt: Runtime, base, updates: dict, heldout: list[torch.Tensor], seeds: int, cycle: int) -> list[dict]:
    """Per-block gains of every update on each validator's scoring subset and on the public check subset."""
    spec = rt.manifest.data
    count = max(spec.validation_blocks // OVERFIT_CHECK_SHARE, spec.eval_batch_size)
    rows = []
    for s in range(seeds):
        seed = f"overfit-check/{cycle}/{s}".encode()
        public = validation_batches(rt, seed, count=count)
        public_base = state_block_losses(rt.model, rt.layout, base, public)
        for v, private in enumerate(heldout):
            batches = validation_batches(rt, seed, private)
            held_base = state_block_losses(rt.model, rt.layout, base, batches)
            for (kind, name), state in updates.items():
                if isinstance(state, list) and s >= len(state):
                    continue  # the memorizer trains for the first seeds only: its data depends on the seed
                upd = state[s] if isinstance(state, list) else state
                rows.append({"cycle": cycle, "seed": s, "validator": v, "kind": kind, "miner": name,
                             "held": (held_base - state_block_losses(rt.model, rt.layout, upd, batches)).tolist(),
                             "public": (public_base - state_block_losses(rt.model, rt.layout, upd, public)).tolist()})
    return rows


def decoded_state(rt: Runtime, base, payload: bytes):
    """The state a validator scores: the decoded payload applied to the cycle's start state."""
    return apply_delta(base, rt.codec.decode(payload))


def swarm_updates(rt: Runtime, cycles: int, miners: int, overfitters: int, decoded: bool = False):
    """Per cycle, (cycle, its start state, {(kind, name): update}): honest miners (moments kept) and val-overfit
    miners (the public validation split, the same H, under max_delta_norm). Once the caller has judged them (and
    added updates of its own to the dict, if it likes), the outer step on the honest updates makes the next cycle's
    state. `decoded`: each honest update as a validator judges it, its payload decoded onto the start state."""
    bound = NORM_MARGIN * rt.manifest.max_delta_norm
    state, buffer, moments = rt.initial_state, None, [None] * miners
    for cycle in range(cycles):
        updates, honest = {}, []
        for m in range(miners):
            sub = train_submission(rt, state, f"miner-{m}", cycle, moments=moments[m])
            moments[m] = sub.moments if rt.manifest.inner.keep_moments else None
            updates[("honest", f"miner-{m}")] = decoded_state(rt, state, sub.payload) if decoded else sub.state
            honest.append(sub.state)
        for k in range(overfitters):
            sub = train_submission(with_train_blocks(rt, rt.validation_blocks), state, f"val-overfit-{k}", cycle)
            updates[("val-overfit", f"val-overfit-{k}")] = within_norm(sub.state, state, bound)
        yield cycle, state, updates
        optimizer = NesterovOuter(rt.outer, buffer)
        state = outer_step(state, honest, optimizer)
        buffer = optimizer.buffer


def collect(rt: Runtime, cycles: int, miners: int, overfitters: int, seeds: int, validators: int,
            checkpoint=None) -> list[dict]:
    heldout = [heldout_blocks(rt, f"v{v}") for v in range(validators)]
    spec = rt.manifest.data
    count = max(spec.validation_blocks // OVERFIT_CHECK_SHARE, spec.eval_batch_size)
    bound = NORM_MARGIN * rt.manifest.max_delta_norm
    rows, start = [], time.time()
    for cycle, state, updates in swarm_updates(rt, cycles, miners, overfitters):
        memorized = []
        for s in range(min(seeds, MEMORIZER_SEEDS)):
            seed = f"overfit-check/{cycle}/{s}".encode()
            public = torch.cat(validation_batches(rt, seed, count=count))
            sub = train_submission(with_train_blocks(rt, public, MEMORIZER_STEPS), state, "memorizer", cycle)
            memorized.append(within_norm(sub.state, state, bound))
        updates[("memorizer", "memorizer")] = memorized
        rows += judgements(rt, state, updates, heldout, seeds, cycle)
        print(f"cycle {cycle}: {len(updates) - 1 + len(memorized)} updates judged {len(rows)} times so far "
              f"[{time.time() - start:.0f}s]", flush=True)
        start = time.time()
        if checkpoint is not None:
            checkpoint(rows)
    return rows


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


RULES = {  # name -> (ratio, slack, z, margin); z and margin None: the excess over ratio x held-out alone decides
    "ratio 2, slack 0.01 (before)": (2.0, 0.01, None, None),
    "ratio 2, slack 0.03": (2.0, 0.03, None, None),
    "ratio 2, slack 0.05": (2.0, 0.05, None, None),
    "ratio 3, slack 0.05": (3.0, 0.05, None, None),
    "ratio 2, slack 0.01, z 3": (2.0, 0.01, 3.0, None),
    "ratio 2, slack 0.01, z 4 (now)": (2.0, 0.01, 4.0, None),
    "ratio 2, slack 0.01, z 4 or excess 0.05": (2.0, 0.01, 4.0, 0.05),
}


def rates(rows: list[dict]) -> dict:
    """Per rule and update kind: the share of judgements zeroed (early = cycle 0, late = the rest)."""
    out = {}
    for name, (ratio, slack, z, margin) in RULES.items():
        per = {}
        for kind in sorted({r["kind"] for r in rows}):
            for when, keep in (("all", lambda c: True), ("early", lambda c: c == 0), ("late", lambda c: c > 0)):
                chosen = [r for r in rows if r["kind"] == kind and keep(r["cycle"])]
                if not chosen:
                    continue
                flagged = sum(overfit_flag(torch.tensor(r["public"]), torch.tensor(r["held"]), ratio, slack, z,
                                           margin) for r in chosen)
                per[f"{kind}/{when}"] = {"zeroed": flagged, "of": len(chosen), "rate": flagged / len(chosen)}
        out[name] = per
    return out


def gains(rows: list[dict]) -> dict:
    out = {}
    for kind in sorted({r["kind"] for r in rows}):
        chosen = [r for r in rows if r["kind"] == kind]
        held, public = [mean(r["held"]) for r in chosen], [mean(r["public"]) for r in chosen]
        out[kind] = {"held_mean": mean(held), "public_mean": mean(public), "held_min": min(held),
                     "held_max": max(held), "public_min": min(public), "public_max": max(public), "n": len(chosen)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--cycles", type=int, default=4, help="swarm cycles (cycle 0 early, the rest late)")
    parser.add_argument("--miners", type=int, default=4, help="honest miners per cycle (default 4)")
    parser.add_argument("--overfitters", type=int, default=2, help="val-overfit miners per cycle (default 2)")
    parser.add_argument("--seeds", type=int, default=8, help="evaluation seeds per cycle (default 8)")
    parser.add_argument("--validators", type=int, default=2, help="private held-out sets (default 2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/overfit_check", help="output stem: STEM.json")
    parser.add_argument("--rescore", metavar="JSON", help="only apply the rules again to a run's saved judgements")
    args = parser.parse_args()
    if args.rescore:
        result = json.loads(Path(args.rescore).read_text())
        result["rules"] = rates(result["judgements"])
        Path(args.rescore).write_text(json.dumps(result, indent=1) + "\n")
        report(result)
        return
    torch.set_num_threads(args.threads)
    start = time.time()
    out = Path(args.out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def result_of(rows: list[dict]) -> dict:
        return {"command": " ".join(["python", *sys.argv]), "seconds": round(time.time() - start),
                "cycles_done": 1 + max(r["cycle"] for r in rows), "gains": gains(rows), "rules": rates(rows),
                "judgements": rows}

    def checkpoint(rows: list[dict]) -> None:  # each finished cycle is kept, should a later one not finish
        out.write_text(json.dumps(result_of(rows), indent=1) + "\n")

    rt = load_tiny(args.config)
    rows = collect(rt, args.cycles, args.miners, args.overfitters, args.seeds, args.validators, checkpoint)
    result = result_of(rows)
    out.write_text(json.dumps(result, indent=1) + "\n")
    report(result)
    print(f"wrote {out} [{result['seconds']}s]")


def report(result: dict) -> None:
    for kind, g in result["gains"].items():
        print(f"{kind}: {g['n']} judgements, held-out gain {g['held_mean']:.4f} ({g['held_min']:.4f}.."
              f"{g['held_max']:.4f}), public {g['public_mean']:.4f} ({g['public_min']:.4f}..{g['public_max']:.4f})")
    for name, per in result["rules"].items():
        print(f"{name}: " + ", ".join(f"{k} {v['zeroed']}/{v['of']} ({100 * v['rate']:.1f}%)"
                                      for k, v in per.items() if k.endswith("/all") or k.startswith("honest")))


if __name__ == "__main__":
    main()
