"""Light miners: does a miner whose unselected experts are frozen in int8 or 4 bits train as well as a full one?

On the embedded default (tiny, math, the shipped expert map), each background trains the selected experts from
the same base for the same steps on the same batches (per seed); every trained state is then put into the full
model in its own dtype and scored there, as validators score. The share of the full miner's math gain that a
light miner keeps is gain(light) / gain(full) on the same seed. Bytes: what the tiny light model holds, and the
frozen-weight share for Qwen3-30B-A3B at top_p 0.1 (swarm.protocol.shapes). Writes JSON and a Markdown table.

    python scripts/light_study.py --out teft/assets/studies/light_miner        # ~5 min on 2 shared cores
    python scripts/light_study.py --steps 10 --seeds 0 --out /tmp/light         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BACKGROUNDS = ("bf16", "int8", "4bit")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-blocks", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="path prefix: writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from swarm.protocol.shapes import CONFIGS, check, miner_bytes
    from teft.data import iterate_batches, load_texts, tokenize_blocks
    from teft.light import load_light_model, resident_bytes
    from teft.model import discover_layout, load_model
    from teft.pol import state_loss
    from teft.selection import ExpertMap
    from teft.state import extract_state
    from teft.train import TrainConfig, train_experts

    seeds = [int(s) for s in args.seeds.split(",")]
    emap = ExpertMap.load(CONFIGS / "tiny-math.map.json")
    full, tokenizer = load_model("tiny")
    layout = discover_layout(full)

    def blocks(spec, split, limit):
        return tokenize_blocks(tokenizer, load_texts(spec, split, limit_bytes=limit), 128)

    train = blocks("math", "train", 2_000_000)
    evals = {d: blocks(d, "validation", 400_000)[:args.eval_blocks] for d in ("math", "general")}
    evals = {d: [b[i:i + 8] for i in range(0, len(b), 8)] for d, b in evals.items()}
    base = extract_state(full, layout, emap)
    base_loss = {d: state_loss(full, layout, base, b) for d, b in evals.items()}
    qwen = check(CONFIGS / "qwen3-30b-a3b.yaml")
    qwen_full = miner_bytes(qwen, "bf16")["frozen"]
    runs, held = [], {}
    for background in BACKGROUNDS:
        model = full
        if background != "bf16":
            model, _, _ = load_light_model("tiny", emap, background)
        held[background] = resident_bytes(model).total
        for seed in seeds:
            cfg = TrainConfig(steps=args.steps, lr=args.lr, warmup_steps=2, grad_clip=1.0, seed=seed)
            start = time.time()
            result = train_experts(model, layout, emap, iterate_batches(train, args.batch_size, f"light/{seed}",
                                                                        args.steps), cfg, init=base)
            seconds = time.time() - start
            losses = {d: state_loss(full, layout, result.state, b) for d, b in evals.items()}
            runs.append({"background": background, "seed": seed, "seconds": round(seconds, 2),
                         "math_loss": losses["math"], "general_loss": losses["general"],
                         "math_gain": base_loss["math"] - losses["math"],
                         "general_drift": losses["general"] - base_loss["general"]})
            print(json.dumps(runs[-1]), flush=True)
    full_gain = {r["seed"]: r["math_gain"] for r in runs if r["background"] == "bf16"}
    full_drift = {r["seed"]: r["general_drift"] for r in runs if r["background"] == "bf16"}
    for r in runs:
        r["share_of_full_gain"] = r["math_gain"] / full_gain[r["seed"]]
        r["drift_minus_full"] = r["general_drift"] - full_drift[r["seed"]]
    summary = []
    for background in BACKGROUNDS:
        mine = [r for r in runs if r["background"] == background]
        shares, drifts = [r["share_of_full_gain"] for r in mine], [r["drift_minus_full"] for r in mine]
        summary.append({"background": background, "tiny_model_bytes": held[background],
                        "tiny_share_of_full_bytes": held[background] / held["bf16"],
                        "qwen3_30b_frozen_share": miner_bytes(qwen, background)["frozen"] / qwen_full,
                        "share_min": min(shares), "share_mean": sum(shares) / len(shares), "share_max": max(shares),
                        "drift_minus_full_max": max(abs(d) for d in drifts),
                        "seconds_per_step": sum(r["seconds"] for r in mine) / len(mine) / args.steps})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    body = {"command": "python scripts/" + Path(__file__).name + " " + " ".join(argv or sys.argv[1:]),
            "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "seeds": seeds,
            "expert_map": "configs/tiny-math.map.json", "selected": emap.count,
            "base_loss": base_loss, "runs": runs, "summary": summary}
    out.with_suffix(".json").write_text(json.dumps(body, indent=1) + "\n")
    lines = [f"# Light miners: the unselected experts frozen in low bits ({args.steps} steps, seeds {args.seeds})", "",
             f"`{body['command']}`", "",
             "Each background trains the tiny model's selected experts (configs/tiny-math.map.json, "
             f"{emap.count} experts) from the same base on the same batches per seed; every state is scored on the "
             "full model in its own dtype (fp32 here), as validators score.", "",
             "| background | bytes held, tiny (share of full) | frozen weights, Qwen3-30B-A3B top_p 0.1 (share of "
             "bf16) | share of the full miner's math gain (min / mean / max over seeds) | general drift vs full, "
             "largest | s / step |", "|---|---|---|---|---|---|"]
    for s in summary:
        held_text = f"{s['tiny_model_bytes'] / 2**20:.1f} MiB ({s['tiny_share_of_full_bytes']:.0%})"
        lines.append(f"| {s['background']} | {held_text}"
                     f" | {s['qwen3_30b_frozen_share']:.0%} | {s['share_min']:.3f} / {s['share_mean']:.3f} / "
                     f"{s['share_max']:.3f} | {s['drift_minus_full_max']:.4f} | {s['seconds_per_step']:.3f} |")
    lines += ["", f"Base math loss {base_loss['math']:.4f}, general {base_loss['general']:.4f}. The tiny model is "
              "fp32, so its 'bf16' row is the full model in its own dtype (fp32). Seconds per step were taken on a "
              "shared machine under other jobs' load: not a speed comparison."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
