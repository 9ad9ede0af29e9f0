"""Benchmark: TEFT (train the top-p selected experts) against full fine-tuning of every parameter.

Same model, same data, same batches. Each mode runs in its own subprocess so peak memory (max RSS, and
peak CUDA memory on a GPU) belongs to that mode alone. Reports trainable parameters, optimizer-state
bytes, peak memory, median step time, and the bytes a swarm worker would send per cycle (the target-expert
state) against a dense exchange of the full model.

    python scripts/bench_sparse_vs_full.py --model tiny --data math --top-p 0.2 --out runs/bench_sparse_vs_full.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def run_mode(args) -> dict:
    from teft.data import load_texts, tokenize_blocks
    from teft.model import discover_layout, load_model
    from teft.routing import routing_profile
    from teft.selection import ExpertMap, select_experts
    from teft.state import expected_size
    from teft.train import lm_loss, optimizer_state_bytes, trainable_experts

    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model, device=device)
    layout = discover_layout(model)
    blocks = tokenize_blocks(tokenizer, load_texts(args.data, "train"), args.block_size,
                             max_tokens=args.block_size * args.batch_size * (args.steps + 8))
    profile = routing_profile(model, layout, blocks[: 8 * args.batch_size], args.batch_size)
    emap = ExpertMap(select_experts(profile, "esft-token", top_p=args.top_p), layout.num_experts)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batches = [blocks[i * args.batch_size:(i + 1) * args.batch_size].to(device) for i in range(args.steps)]

    def loop(params):
        opt = torch.optim.AdamW(params, lr=1e-4, foreach=False)
        times = []
        model.train()
        for batch in batches:
            start = time.perf_counter()
            loss = lm_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return opt, times

    if args.mode == "teft":
        with trainable_experts(model, layout, emap) as params:
            opt, times = loop(params)
            n_params = sum(p.numel() for p in params)
    else:
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        opt, times = loop(params)
        n_params = sum(p.numel() for p in params)
    full_bytes = sum(p.numel() * 4 for p in model.parameters())
    total_experts = layout.num_experts * len(layout.layers)
    return {
        "mode": args.mode, "device": device, "steps": args.steps, "batch_size": args.batch_size,
        "block_size": args.block_size,
        "selected_experts": emap.count if args.mode == "teft" else total_experts,
        "total_routed_experts": total_experts,
        "trainable_params": n_params, "total_params": layout.param_counts["total"],
        "optimizer_state_bytes": optimizer_state_bytes(opt),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
        "step_time_median_s": statistics.median(times[2:] or times),
        "payload_bytes_per_cycle": expected_size(layout, emap) if args.mode == "teft" else full_bytes,
        "dense_model_bytes_fp32": full_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="model directory or 'tiny' (default tiny)")
    parser.add_argument("--data", default="math", help="training data (default math)")
    parser.add_argument("--top-p", type=float, default=0.2, help="TEFT selection budget (default 0.2)")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per mode (default 12)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--block-size", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--device", default="auto", help="cpu or auto (default auto)")
    parser.add_argument("--out", default="runs/bench_sparse_vs_full.json", help="JSON output path")
    parser.add_argument("--mode", choices=["teft", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    results = {}
    for mode in ("teft", "full"):
        cmd = [sys.executable, __file__, "--mode", mode] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("mode", "out")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            sys.exit(f"{mode} run failed:\n{proc.stderr[-2000:]}")
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    teft, full = results["teft"], results["full"]
    results["ratios_teft_over_full"] = {
        k: teft[k] / full[k] for k in ("trainable_params", "optimizer_state_bytes", "peak_rss_bytes",
                                       "step_time_median_s", "payload_bytes_per_cycle")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'':28}{'TEFT':>16}{'full FT':>16}{'ratio':>10}")
    for key, ratio in results["ratios_teft_over_full"].items():
        print(f"{key:28}{teft[key]:>16,.4g}{full[key]:>16,.4g}{ratio:>10.3f}")
    print(f"selected experts: {teft['selected_experts']} of {teft['total_routed_experts']}; wrote {out}")


if __name__ == "__main__":
    main()
