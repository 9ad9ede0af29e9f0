"""Sparse inner loop: AdamW on the selected expert slices only.

transformers 5 keeps a layer's experts in one fused [E, ...] tensor, so `requires_grad` cannot pick
experts. Each fused tensor gets a parametrization that returns `frozen.index_copy(0, ids, rows)` with
`rows` (the selected experts) the only trainable parameter: optimizer state exists only for them, and
the router, hub and non-selected experts stay bit-identical. Per-expert modules simply get
`requires_grad` on the selected ones.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from teft.errors import TeftError
from teft.model import MoELayout, get_module
from teft.selection import ExpertMap
from teft.state import state_key


class _SelectedRows(nn.Module):
    """Parametrization: the frozen fused tensor with the selected expert rows replaced by trainable ones."""

    def __init__(self, ids: torch.Tensor, rows: torch.Tensor):
        super().__init__()
        self.register_buffer("ids", ids, persistent=False)
        self.rows = nn.Parameter(rows)

    def forward(self, frozen: torch.Tensor) -> torch.Tensor:
        return frozen.index_copy(0, self.ids, self.rows.to(frozen.dtype))


@contextlib.contextmanager
def trainable_experts(model: nn.Module, layout: MoELayout, expert_map: ExpertMap) -> Iterator[list[nn.Parameter]]:
    """Freeze the whole model except the selected experts; yield their parameters; undo on exit.

    On exit the trained values stay in the model and every parameter is frozen again.
    """
    previous = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    trainable: list[nn.Parameter] = []
    registered: list[tuple[nn.Module, str]] = []
    try:
        for layer in sorted(expert_map.layers):
            ids = sorted(expert_map.layers[layer])
            if not ids:
                continue
            moe = layout.layer(layer)
            experts = get_module(model, moe.experts)
            if moe.fused:
                for param, _ in moe.params:
                    full = getattr(experts, param)
                    index = torch.tensor(ids, dtype=torch.long, device=full.device)
                    rows = full.detach()[index].clone()
                    parametrize.register_parametrization(experts, param, _SelectedRows(index, rows), unsafe=True)
                    registered.append((experts, param))
                    trainable.append(experts.parametrizations[param][0].rows)
            else:
                for e in ids:
                    for p in experts[e].parameters():
                        p.requires_grad_(True)
                        trainable.append(p)
        yield trainable
    finally:
        with torch.no_grad():
            for module, param in registered:
                parametrize.remove_parametrizations(module, param, leave_parametrized=True)
        for name, p in model.named_parameters():
            p.requires_grad_(previous.get(name, False))


@dataclass
class TrainConfig:
    """Inner-loop hyper-parameters (the manifest's `inner` section)."""

    steps: int = 20
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    # Cross-cycle schedule: this call's first step is global step `step_offset` of a schedule that spans
    # `total_steps` (the whole run, e.g. cycles x steps); None keeps one warmup/cosine per call.
    step_offset: int = 0
    total_steps: int | None = None


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    optimizer_state_bytes: int = 0
    trainable_params: int = 0
    moments: dict[str, torch.Tensor] = field(default_factory=dict)  # AdamW state to carry to the next call


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to min_lr_ratio * lr at the horizon (total_steps, else steps).

    `step` is the global step (cfg.step_offset + the call's own step), so a schedule spanning many cycles
    warms up once and decays once; past the horizon the lr stays at its floor.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    horizon = cfg.total_steps if cfg.total_steps is not None else cfg.steps
    span = max(horizon - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


SCHEDULES = ("cycle", "run")  # inner lr schedule: warmup/cosine restarted every cycle, or one over the run


def cycle_config(cfg: TrainConfig, cycle: int, schedule: str = "cycle", cycles: int | None = None) -> TrainConfig:
    """A miner's inner config for one cycle: seeded by the cycle; with the `run` schedule its steps sit at
    global steps cycle*H.. of one warmup/cosine spanning `cycles` cycles, so it depends on the cycle number
    alone (a restarted or late miner lands on the same lr as everyone else)."""
    from dataclasses import replace

    if schedule not in SCHEDULES:
        raise TeftError(f"unknown inner schedule '{schedule}'; use one of {', '.join(SCHEDULES)}")
    if schedule == "cycle":
        return replace(cfg, seed=cycle, step_offset=0, total_steps=None)
    if not cycles or cycles < 1:
        raise TeftError("the 'run' inner schedule needs the run's length in cycles (a positive number)")
    return replace(cfg, seed=cycle, step_offset=cycle * cfg.steps, total_steps=cycles * cfg.steps)


def lm_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token loss that ignores padding positions."""
    labels = input_ids.clone()
    if attention_mask is not None:
        labels[attention_mask == 0] = -100
    device = input_ids.device
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False)
    return out.loss.float()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values()
               for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0)


class Interrupted(Exception):
    """Training was asked to stop (a peer shutting down); the model holds a partial update."""


MOMENT_FIELDS = ("exp_avg", "exp_avg_sq", "step")  # AdamW's per-parameter state, as key suffixes


ParamKeys = str | list[str]  # a parameter's moments key: one for the whole tensor, or one per row (dim 0)


def expert_param_keys(model: nn.Module, layout: MoELayout, expert_map: ExpertMap) -> list[ParamKeys]:
    """The expert-state keys of each parameter `trainable_experts` yields, in its order: a list with one key per
    row of a fused tensor's selected rows, one key for a per-expert module's parameter. Optimizer state keyed
    this way does not depend on how the trainable parameters are built, so it saves and loads as a state."""
    keys: list[ParamKeys] = []
    for layer in sorted(expert_map.layers):
        ids = sorted(expert_map.layers[layer])
        if not ids:
            continue
        moe = layout.layer(layer)
        if moe.fused:
            keys += [[state_key(layer, e, param) for e in ids] for param, _ in moe.params]
        else:
            experts = get_module(model, moe.experts)
            keys += [state_key(layer, e, name) for e in ids for name, _ in experts[e].named_parameters()]
    return keys


def _rows(tensor: torch.Tensor, names: ParamKeys) -> list[tuple[str, torch.Tensor]]:
    """(key, slice) pairs: the whole tensor under one key, or row i under the i-th key."""
    if isinstance(names, str):
        return [(names, tensor)]
    return list(zip(names, tensor.unbind(0), strict=True))


def _load_moments(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], keys: list[ParamKeys],
                  moments: dict[str, torch.Tensor]) -> None:
    """Put saved AdamW moments back on the parameters they were taken from (matched by key, not identity)."""
    for p, names in zip(params, keys, strict=True):
        whole = isinstance(names, str)
        names = [names] if whole else names
        missing = [f"{n}.{f}" for n in names for f in MOMENT_FIELDS if f"{n}.{f}" not in moments]
        if missing:
            raise TeftError(f"optimizer state lacks {missing[0]}: it was saved for another expert map or model; "
                            "delete the saved moments to start them afresh")
        state = {}
        for f in ("exp_avg", "exp_avg_sq"):
            parts = [moments[f"{n}.{f}"] for n in names]
            value = parts[0] if whole else torch.stack(parts)
            if tuple(value.shape) != tuple(p.shape):
                raise TeftError(f"optimizer state {names[0]}.{f} has shape {list(value.shape)}, the parameter "
                                f"{list(p.shape)}: it is for another model; delete the saved moments")
            state[f] = value.detach().to(device=p.device, dtype=p.dtype).clone()
        steps = {float(moments[f"{n}.step"]) for n in names}
        if len(steps) != 1:
            raise TeftError(f"optimizer state rows of {names[0]} disagree on the step count: the file is corrupt; "
                            "delete the saved moments")
        state["step"] = torch.tensor(steps.pop(), dtype=torch.float32)
        optimizer.state[p] = state


def _export_moments(optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                    keys: list[ParamKeys]) -> dict[str, torch.Tensor]:
    """AdamW's state as fp32 CPU tensors keyed `<key>.exp_avg`, `<key>.exp_avg_sq`, `<key>.step`."""
    out: dict[str, torch.Tensor] = {}
    for p, names in zip(params, keys, strict=True):
        state = optimizer.state.get(p)
        if not state:
            continue
        step = state["step"].detach().to(device="cpu", dtype=torch.float32).reshape(())
        for f in ("exp_avg", "exp_avg_sq"):
            for name, part in _rows(state[f], names):
                out[f"{name}.{f}"] = part.detach().to(device="cpu", dtype=torch.float32).clone()
        for name in [names] if isinstance(names, str) else names:
            out[f"{name}.step"] = step.clone()
    return out


def train_loop(model: nn.Module, params: list[nn.Parameter], batches: Iterable, cfg: TrainConfig,
               progress: bool = False, desc: str = "train", should_stop: Callable[[], bool] | None = None,
               moments: dict[str, torch.Tensor] | None = None, keys: list[ParamKeys] | None = None
               ) -> TrainResult:
    """AdamW over `params` for cfg.steps batches: warmup/cosine, clipping, loss ignoring padding.

    `moments` (from a previous call's result) resume AdamW where it stopped instead of from zero; `keys`
    names each parameter's moments (default `params.{i}`). The result's `moments` hold the new state.
    """
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    device = params[0].device if params else torch.device("cpu")
    keys = keys if keys is not None else [f"params.{i}" for i in range(len(params))]
    if len(keys) != len(params):
        raise TeftError(f"{len(keys)} optimizer-state key lists for {len(params)} parameters: they must pair up")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                  foreach=False)
    if moments:
        _load_moments(optimizer, params, keys, moments)
    result = TrainResult(trainable_params=sum(p.numel() for p in params))
    was_training = model.training
    model.train()
    iterator = iter(batches)
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, unit="step")
    for step in bar:
        if should_stop is not None and should_stop():
            raise Interrupted(f"stopped after {step} of {cfg.steps} steps")
        batch = next(iterator)
        mask = None
        if isinstance(batch, dict):
            batch, mask = batch["input_ids"], batch.get("attention_mask")
            mask = None if mask is None else mask.to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg.step_offset + step, cfg)
        loss = lm_loss(model, batch.to(device), mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        result.losses.append(loss.item())
        bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
    result.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    result.moments = _export_moments(optimizer, params, keys)
    model.train(was_training)
    return result


def train_experts(model: nn.Module, layout: MoELayout, expert_map: ExpertMap, batches: Iterable,
                  cfg: TrainConfig, progress: bool = False, should_stop: Callable[[], bool] | None = None,
                  moments: dict[str, torch.Tensor] | None = None) -> TrainResult:
    """Train only the selected experts in place; everything else stays bit-identical.

    `moments`: the AdamW state a previous call returned (result.moments, keyed like the expert state with
    `.exp_avg`/`.exp_avg_sq`/`.step` suffixes; `teft.state.to_bytes` saves it), to keep them across cycles.
    """
    keys = expert_param_keys(model, layout, expert_map)
    with trainable_experts(model, layout, expert_map) as params:
        if not params:
            raise TeftError("the expert map selects no experts: nothing to train; use a larger budget")
        return train_loop(model, params, batches, cfg, progress=progress, should_stop=should_stop,
                          moments=moments, keys=keys)
