"""The swarm's cycle without the network: N miners train from the same state, their deltas are merged by
the swarm's own reduce, repeat. Compares outer-step settings on target loss and general drift per cycle
in minutes instead of full simulations (honest miners only, every submission merged).

    python scripts/outer_sweep.py --config configs/tiny.yaml --cycles 6 --miners 4 \\
        --settings 0.7:0.9:1e-3 1.0:0:1e-3        # outer lr : outer momentum : inner lr
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from swarm.launch import write_manifest
from swarm.net.identity import load_or_create
from swarm.protocol.consensus import reduce
from swarm.protocol.manifest import load
from swarm.protocol.runtime import load_runtime, report_batches
from swarm.roles.miner import train_submission
from teft.pol import state_loss
from teft.state import from_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml", help="manifest template (default configs/tiny.yaml)")
    parser.add_argument("--cycles", type=int, default=6, help="cycles per setting (default 6)")
    parser.add_argument("--miners", type=int, default=4, help="honest miners per cycle (default 4)")
    parser.add_argument("--settings", nargs="+", default=["0.7:0.9:1e-3", "1.0:0:1e-3"],
                        help="outer_lr:outer_momentum:inner_lr triples to compare")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", default="runs/outer_sweep.json", help="JSON output path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        key = load_or_create(Path(tmp) / "k.key").public_key_str
        manifest = load(write_manifest(args.config, Path(tmp) / "run.yaml", [key], 0, {"quorum": 1}))
        rt = load_runtime(manifest)
    target, general = report_batches(rt.validation_blocks), report_batches(rt.general_blocks)
    base_t, base_g = (state_loss(rt.model, rt.layout, rt.initial_state, b) for b in (target, general))
    results = {"base": {"target_loss": base_t, "general_loss": base_g}, "runs": []}
    for setting in args.settings:
        outer_lr, momentum, inner_lr = (float(x) for x in setting.split(":"))
        rt.manifest.inner.lr = inner_lr
        state, buffer, curve, start = rt.initial_state, None, [], time.time()
        for cycle in range(args.cycles):
            subs = [from_bytes(train_submission(rt, state, f"miner-{m}", cycle).payload) for m in range(args.miners)]
            state, buffer = reduce(state, buffer, subs, replace(rt.outer, lr=outer_lr, momentum=momentum))
            t, g = (state_loss(rt.model, rt.layout, state, b) for b in (target, general))
            curve.append({"cycle": cycle, "target_loss": t, "general_drift": g - base_g})
        run = {"outer_lr": outer_lr, "momentum": momentum, "inner_lr": inner_lr, "curve": curve,
               "seconds": round(time.time() - start, 1)}
        results["runs"].append(run)
        print(f"outer lr {outer_lr} momentum {momentum} inner lr {inner_lr}: " + ", ".join(
            f"({p['target_loss']:.3f}, {p['general_drift']:+.3f})" for p in curve) + f"  [{run['seconds']}s]",
            flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"(target loss, general drift) per cycle; base target {base_t:.3f}; wrote {out}")


if __name__ == "__main__":
    main()
