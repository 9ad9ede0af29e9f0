"""Why a sparse payload slows the swarm: how much of a delta's norm its top-k carries, and how much the miners'
choices overlap. Trains M miners for one cycle from Phi_0 on the embedded default (configs/tiny.yaml), in-process.

    python scripts/codec_support.py --miners 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from outer_sweep import load_tiny  # noqa: E402

from swarm.roles.miner import train_submission  # noqa: E402
from teft.codec import Codec, CodecSpec  # noqa: E402
from teft.outer import pseudo_gradient  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--miners", type=int, default=4)
    parser.add_argument("--densities", nargs="+", type=float, default=[1 / 64, 1 / 32, 1 / 16])
    parser.add_argument("--chunk", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rt = load_tiny(args.config)
    flat = []
    for m in range(args.miners):
        delta = pseudo_gradient(rt.initial_state, train_submission(rt, rt.initial_state, f"miner-{m}", 0).state)
        flat.append(rt.codec.flatten(delta))
    norms = torch.stack([x.norm() for x in flat])
    print(f"{args.miners} miners, cycle 0: the mean of their dense deltas keeps "
          f"{float(torch.stack(flat).mean(0).norm() / norms.mean()):.2f} of a delta's norm")
    for density in args.densities:
        codec = Codec(CodecSpec("sparse", chunk=args.chunk, density=density), rt.codec.shapes)
        chosen = torch.stack([codec.decode_flat(codec.encode_flat(x)) != 0 for x in flat])
        share = torch.stack([x[c].norm() / x.norm() for x, c in zip(flat, chosen, strict=True)]).mean()
        overlap = chosen.any(0).sum() / chosen.sum(1).float().mean()
        print(f"top {density:.4f} of each {args.chunk}: carries {float(share):.3f} of a delta's norm; the union of "
              f"the miners' choices is {float(overlap):.2f}x one miner's")


if __name__ == "__main__":
    main()
