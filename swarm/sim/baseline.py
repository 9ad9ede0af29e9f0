"""Baselines for a simulation: full fine-tuning and single-process TEFT on the same token budget.

Each baseline sees, per swarm cycle, as many tokens as the swarm's honest miners trained on together
(miners x H x batch x sequence), and is evaluated after each such chunk on the same fixed blocks the
validators report, so its curves line up with the swarm's cycle by cycle.
"""

from __future__ import annotations

import math
from dataclasses import replace

from swarm.protocol.runtime import Runtime, report_batches
from teft.data import iterate_batches
from teft.pol import mean_loss
from teft.train import train_experts, train_loop


def run_baselines(rt: Runtime, cycles: int, miners: int, full_lr: float | None = None) -> dict:
    """{method: [{cycle, target_loss, general_loss, ...}]} for `full` and `teft`, plus the base model; the
    model is back at its base weights afterwards."""
    base = {k: v.clone() for k, v in rt.model.state_dict().items()}
    target, general = report_batches(rt.validation_blocks), report_batches(rt.general_blocks)
    steps_per_cycle = miners * rt.manifest.inner.steps
    inner = rt.inner
    points = 4  # evaluations per cycle's worth of tokens, so matched-loss comparisons interpolate finely
    chunk_steps = max(steps_per_cycle // points, 1)
    results = {"steps_per_cycle": steps_per_cycle, "tokens_per_cycle": steps_per_cycle *
               rt.manifest.inner.batch_size * rt.train_blocks.shape[1],
               "base": {"target_loss": mean_loss(rt.model, target), "general_loss": mean_loss(rt.model, general)}}
    for method in ("teft", "full"):
        print(f"baseline: {method} on the swarm's token budget ({cycles} x {steps_per_cycle} steps)", flush=True)
        rt.model.load_state_dict(base)
        lr = inner.lr if method == "teft" else (full_lr or inner.lr / 10)
        batches = iterate_batches(rt.train_blocks, rt.manifest.inner.batch_size, "baseline",
                                  chunk_steps * points * cycles)
        curve = []
        for step in range(cycles * points):
            chunk = replace(inner, steps=chunk_steps, lr=lr, min_lr_ratio=1.0, seed=step)
            if method == "teft":
                train_experts(rt.model, rt.layout, rt.expert_map, batches, chunk)
            else:
                params = list(rt.model.parameters())
                for p in params:
                    p.requires_grad_(True)
                train_loop(rt.model, params, batches, chunk, desc="full fine-tuning")
                for p in params:
                    p.requires_grad_(False)
            t, g = mean_loss(rt.model, target), mean_loss(rt.model, general)
            curve.append({"cycle": (step + 1) / points - 1, "target_loss": t, "general_loss": g,
                          "general_perplexity": math.exp(g), "lr": lr})
        results[method] = curve
    rt.model.load_state_dict(base)
    return results
