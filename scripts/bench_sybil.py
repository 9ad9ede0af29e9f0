"""A 200-Sybil flood against a small honest swarm, whole cycles in one process (tests/swarm_double.py).

Real roles, records, signatures and tiny model; virtual time. Prints and writes JSON: the evaluation cap,
each validator's measured wall time in the evaluate phase and submissions evaluated per cycle, and the
fraction of cycles in which honest miners were merged.

    PYTHONPATH=. python scripts/bench_sybil.py --sybils 200 --cycles 4 --out bench_sybil.json
    PYTHONPATH=. python scripts/bench_sybil.py --sybils 200 --cycles 4 --admit-miners   # with admission
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

GENESIS = 1_900_000_000.0


def timed_validator():
    """A Validator that records how long its evaluate phase took, in wall-clock seconds."""
    from swarm.roles import Validator

    class Timed(Validator):
        def on_evaluate(self, cycle):
            start = time.perf_counter()
            try:
                super().on_evaluate(cycle)
            finally:
                cycle.log.note += f"evaluate_wall_s={time.perf_counter() - start:.3f}; "

    return Timed


def run(sybils: int, cycles: int, miners: int, root: Path, admit: bool = False) -> dict:
    from swarm_double import FEW_STEPS, Swarm

    from swarm.launch import write_manifest
    from swarm.net.identity import load_or_create
    from swarm.protocol.manifest import load
    from swarm.roles import Miner
    from swarm.roles.validator import FETCHES_PER_SLOT
    from swarm.sim.adversaries import role_for
    from swarm.sim.adversaries.flood import SYBILS_ENV

    os.environ[SYBILS_ENV] = str(sybils)
    validators = ["validator-0", "validator-1"]
    keys = [load_or_create(root / f"{v}.key").public_key_str for v in validators]
    miner_keys = [load_or_create(root / f"miner-{i}.key") for i in range(miners)]
    overrides = {"inner": {**FEW_STEPS, "steps": 4}, "quorum": 2, "data": {"validation_blocks": 16}}
    if admit:  # the operators' miner allowlist (admission, off by default)
        overrides["miners"] = [k.public_key_str for k in miner_keys]
    path = write_manifest(REPO / "configs" / "tiny.yaml", root / "run" / "run.yaml", keys, GENESIS, overrides)
    manifest = load(path)
    swarm = Swarm(manifest, root)
    for v in validators:
        swarm.add(v, timed_validator())
    for i in range(miners):
        swarm.add(f"miner-{i}", Miner, identity=miner_keys[i])
    swarm.add("miner-sybil-flood", role_for("sybil-flood"))
    started = time.perf_counter()
    swarm.run(cycles=cycles, timeout=3600)
    wall = time.perf_counter() - started
    honest = {swarm.peers[f"miner-{i}"].me for i in range(miners)}
    sybil_ids = {t.peer_key for t in swarm.peers["miner-sybil-flood"].role.sybils}
    per_validator = {}
    for v in validators:
        rows = [json.loads(line) for line in (swarm.peers[v].store.root / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if r["cycle"] < cycles]
        per_validator[v] = {
            "evaluate_wall_s": [float(r["note"].split("evaluate_wall_s=")[1].split(";")[0]) for r in rows],
            "tried_or_refused": [len(r["scores"]) for r in rows],
            "judged": [len(r["evaluated"]) for r in rows],
            "honest_judged": [len(honest & set(r["evaluated"])) for r in rows],
            "refused_without_fetch": [sum(why.startswith("announced no addresses") for why in r["rejected"].values())
                                      for r in rows],
            "candidates_over_fetch_cap": [int(r["note"].split(" submissions over the fetch cap")[0].split()[-1])
                                          if "over the fetch cap" in r["note"] else 0 for r in rows],
        }
    ref = [json.loads(line) for line in (swarm.peers["validator-0"].store.root / "metrics.jsonl").read_text()
           .splitlines()]
    ref = [r for r in ref if r["cycle"] < cycles]
    merged_honest = [bool(honest & set(r["merged"])) for r in ref]
    return {
        "sybils": sybils, "honest_miners": miners, "miner_allowlist": admit, "validators": len(validators),
        "cycles": cycles,
        "cap_max_submissions": manifest.max_submissions,
        "fetch_cap": FETCHES_PER_SLOT * manifest.max_submissions,
        "evaluate_phase_s": manifest.timings.evaluate,
        "per_validator": per_validator,
        "honest_merged_per_cycle": merged_honest,
        "honest_merged_fraction": sum(merged_honest) / len(merged_honest),
        "sybils_ever_merged": any(sybil_ids & set(r["merged"]) for r in ref),
        "quorum_met_per_cycle": [r["quorum_met"] for r in ref],
        "wall_s": round(wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sybils", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--miners", type=int, default=3, help="honest miners (default 3)")
    parser.add_argument("--runs", type=int, default=1, help="independent swarms (fresh seeds and keys)")
    parser.add_argument("--out", default=None, help="write the JSON here too")
    parser.add_argument("--admit-miners", action="store_true",
                        help="turn on admission: the manifest lists the honest miners (an operator's miner allowlist)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    results = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run(args.sybils, args.cycles, args.miners, Path(tmp), args.admit_miners))
    merged = [m for r in results for m in r["honest_merged_per_cycle"]]
    summary = {"runs": results, "honest_merged_fraction": sum(merged) / len(merged),
               "max_judged_per_validator_cycle": max(n for r in results for v in r["per_validator"].values()
                                                     for n in v["judged"]),
               "max_tried_or_refused_per_validator_cycle": max(n for r in results for v in r["per_validator"].values()
                                                               for n in v["tried_or_refused"]),
               "max_evaluate_wall_s": max(s for r in results for v in r["per_validator"].values()
                                          for s in v["evaluate_wall_s"])}
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
