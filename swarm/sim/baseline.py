"""Baselines for a simulation: what the swarm's progress and forgetting are measured against.

- `teft` and `full`: single-process TEFT and full fine-tuning on the swarm's token budget (per swarm cycle, as
  many tokens as its honest miners trained on together: miners x H x batch x sequence);
- `lone`: one miner alone, H steps per cycle for the same cycles, with the swarm miners' inner loop (the
  reference of the speedup: how many cycles a lone miner needs for the swarm's loss);
- `dense_diloco`: M workers training all parameters from the same state with the same H, data and outer step
  (does TEFT or the averaging make the swarm forget less?).

Each curve is evaluated on the same fixed blocks the validators report (the test split, runtime.report_sets:
never data a miner may train on), so it lines up with the swarm's cycles: a point with `cycle` c is the model
after c + 1 cycles' worth of training.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch

from swarm.protocol.runtime import Runtime, report_sets
from swarm.roles.miner import train_submission
from swarm.sim.report import BASELINES
from teft.data import iterate_batches
from teft.outer import OuterConfig
from teft.pol import mean_loss
from teft.state import ExpertState, load_state
from teft.train import TrainConfig, cycle_config, train_experts, train_loop


@dataclass(frozen=True)
class InnerPlan:
    """How a miner's inner loop carries over from cycle to cycle."""

    keep_moments: bool = False  # AdamW moments kept by each miner across cycles (DiLoCo's workers do)
    schedule: str = "cycle"  # "cycle": warmup/cosine every cycle; "run": one warmup/cosine over `cycles`
    cycles: int | None = None  # the run schedule's horizon in cycles

    @property
    def label(self) -> str:
        return f"{'keep' if self.keep_moments else 'reset'}-moments/{self.schedule}-schedule"


def plan_from_manifest(manifest, cycles: int) -> InnerPlan:
    """The inner plan a run's manifest asks for (today's behaviour where its inner section says nothing)."""
    inner = manifest.inner
    return InnerPlan(inner.keep_moments, inner.schedule, inner.schedule_cycles or cycles)


def inner_config(rt: Runtime, cycle: int, plan: InnerPlan, steps: int | None = None,
                 lr: float | None = None) -> TrainConfig:
    """A swarm miner's TrainConfig for one cycle under `plan` (H = `steps`, default the manifest's)."""
    base = rt.inner
    base = replace(base, steps=steps or base.steps, lr=lr or base.lr)
    return cycle_config(base, cycle, plan.schedule, plan.cycles)


def miner_cycle(rt: Runtime, base: ExpertState, miner_id: str, cycle: int, plan: InnerPlan,
                moments: dict | None = None, steps: int | None = None,
                lr: float | None = None) -> tuple[ExpertState, dict | None, list[float]]:
    """What an honest swarm miner does in one cycle (roles.miner.train_submission), under `plan` instead of the
    manifest's: (Phi_i, moments to keep, losses). The model is back at `base` afterwards."""
    sub = train_submission(rt, base, miner_id, cycle, moments=moments if plan.keep_moments else None,
                           cfg=inner_config(rt, cycle, plan, steps, lr))
    return sub.state, (sub.moments if plan.keep_moments else None), sub.losses


def _point(rt: Runtime, cycle: float, target, general, **extra) -> dict:
    t, g = mean_loss(rt.model, target), mean_loss(rt.model, general)
    return {"cycle": cycle, "target_loss": t, "general_loss": g, "general_perplexity": math.exp(g), **extra}


def lone_miner(rt: Runtime, cycles: int, plan: InnerPlan | None = None, steps: int | None = None,
               lr: float | None = None, miner_id: str = "miner-0") -> list[dict]:
    """One miner (`miner_id`'s batches), H steps per cycle from its own last state, no outer step."""
    plan = plan or plan_from_manifest(rt.manifest, cycles)
    target, general = report_sets(rt)
    state, moments, curve = rt.initial_state, None, []
    for cycle in range(cycles):
        state, moments, _ = miner_cycle(rt, state, miner_id, cycle, plan, moments, steps, lr)
        load_state(rt.model, rt.layout, state)
        curve.append(_point(rt, cycle, target, general))
    load_state(rt.model, rt.layout, rt.initial_state)
    return curve


def dense_outer_step(base: dict, news: list[dict], buffer: dict, cfg: OuterConfig) -> tuple[dict, dict]:
    """The swarm's outer step (uniform merge, Nesterov) over whole-model tensors keyed by parameter name."""
    lr, mu = torch.tensor(cfg.lr, dtype=torch.float32), torch.tensor(cfg.momentum, dtype=torch.float32)
    weight = torch.tensor(1.0 / len(news), dtype=torch.float32)
    state, new_buffer = OrderedDict(), OrderedDict()
    for key in sorted(base):
        delta = torch.zeros_like(base[key], dtype=torch.float32)
        for new in news:
            delta = delta + (base[key].float() - new[key].float()) * weight
        buf = delta.clone() if key not in buffer else mu * buffer[key] + delta
        update = delta + mu * buf if cfg.nesterov else buf
        new_buffer[key], state[key] = buf, base[key].float() - lr * update
    return state, new_buffer


def dense_diloco(rt: Runtime, cycles: int, miners: int, plan: InnerPlan | None = None,
                 outer: OuterConfig | None = None, lr: float | None = None, steps: int | None = None) -> list[dict]:
    """M workers train every parameter from the same state on the swarm miners' batches, then one outer step.
    The model is back at its base weights afterwards."""
    plan = plan or plan_from_manifest(rt.manifest, cycles)
    outer = outer or rt.outer
    lr = lr or rt.inner.lr / 10  # the full fine-tuning baseline's lr: all parameters at the experts' lr diverge
    target, general = report_sets(rt)
    original = {k: v.clone() for k, v in rt.model.state_dict().items()}
    names = [n for n, _ in rt.model.named_parameters()]
    state = {n: p.detach().float().clone() for n, p in rt.model.named_parameters()}
    buffer: dict = {}
    moments: dict[int, dict | None] = {m: None for m in range(miners)}
    curve = []
    try:
        for cycle in range(cycles):
            cfg = inner_config(rt, cycle, plan, steps, lr)
            news = []
            for m in range(miners):
                _load_params(rt.model, state)
                params = list(rt.model.parameters())
                for p in params:
                    p.requires_grad_(True)
                batches = iterate_batches(rt.train_blocks, rt.manifest.inner.batch_size, f"miner-{m}/{cycle}",
                                          cfg.steps)
                result = train_loop(rt.model, params, batches, cfg, desc="dense DiLoCo", keys=names,
                                    moments=moments[m] if plan.keep_moments else None)
                for p in params:
                    p.requires_grad_(False)
                moments[m] = result.moments if plan.keep_moments else None
                news.append({n: p.detach().float().clone() for n, p in rt.model.named_parameters()})
            state, buffer = dense_outer_step(state, news, buffer, outer)
            _load_params(rt.model, state)
            curve.append(_point(rt, cycle, target, general))
    finally:
        rt.model.load_state_dict(original)
    return curve


@torch.no_grad()
def _load_params(model: torch.nn.Module, state: dict) -> None:
    for name, p in model.named_parameters():
        p.copy_(state[name].to(p.dtype))


def token_budget(rt: Runtime, cycles: int, miners: int, methods=("teft", "full"), full_lr: float | None = None,
                 points: int = 4) -> dict:
    """Single-process TEFT and full fine-tuning on the swarm's token budget, `points` evaluations per cycle's
    worth of tokens (so matched-loss comparisons interpolate finely)."""
    base = {k: v.clone() for k, v in rt.model.state_dict().items()}
    target, general = report_sets(rt)
    steps_per_cycle = miners * rt.manifest.inner.steps
    inner = rt.inner
    chunk_steps = max(steps_per_cycle // points, 1)
    results = {}
    for method in methods:
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
            curve.append(_point(rt, (step + 1) / points - 1, target, general, lr=lr))
        results[method] = curve
    rt.model.load_state_dict(base)
    return results


def run_baselines(rt: Runtime, cycles: int, miners: int, full_lr: float | None = None,
                  plan: InnerPlan | None = None, which: tuple[str, ...] = BASELINES) -> dict:
    """{method: [{cycle, target_loss, general_loss, ...}]} for each of `which` (`teft`, `full`, `lone`,
    `dense_diloco`), plus the base model; the model is back at its base weights afterwards."""
    target, general = report_sets(rt)
    steps_per_cycle = miners * rt.manifest.inner.steps
    plan = plan or plan_from_manifest(rt.manifest, cycles)
    results = {"steps_per_cycle": steps_per_cycle, "tokens_per_cycle": steps_per_cycle *
               rt.manifest.inner.batch_size * rt.train_blocks.shape[1],
               "inner_plan": plan.label, "outer": vars(rt.outer),
               "base": {"target_loss": mean_loss(rt.model, target), "general_loss": mean_loss(rt.model, general)}}
    budget = tuple(m for m in ("teft", "full") if m in which)
    if budget:
        results |= token_budget(rt, cycles, miners, methods=budget, full_lr=full_lr)
    if "lone" in which:
        print(f"baseline: a lone miner ({cycles} x {rt.manifest.inner.steps} steps, {plan.label})", flush=True)
        results["lone"] = lone_miner(rt, cycles, plan)
    if "dense_diloco" in which:
        print(f"baseline: dense DiLoCo ({miners} workers x {rt.manifest.inner.steps} steps, all parameters)",
              flush=True)
        results["dense_diloco"] = dense_diloco(rt, cycles, miners, plan, lr=full_lr)
    return results
