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


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    optimizer_state_bytes: int = 0
    trainable_params: int = 0


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to min_lr_ratio * lr."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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


def train_loop(model: nn.Module, params: list[nn.Parameter], batches: Iterable, cfg: TrainConfig,
               progress: bool = False, desc: str = "train", should_stop: Callable[[], bool] | None = None
               ) -> TrainResult:
    """AdamW over `params` for cfg.steps batches: warmup/cosine, clipping, loss ignoring padding."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    device = params[0].device if params else torch.device("cpu")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                  foreach=False)
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
            group["lr"] = lr_at(step, cfg)
        loss = lm_loss(model, batch.to(device), mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        result.losses.append(loss.item())
        bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
    result.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    model.train(was_training)
    return result


def train_experts(model: nn.Module, layout: MoELayout, expert_map: ExpertMap, batches: Iterable,
                  cfg: TrainConfig, progress: bool = False, should_stop: Callable[[], bool] | None = None
                  ) -> TrainResult:
    """Train only the selected experts in place; everything else stays bit-identical."""
    with trainable_experts(model, layout, expert_map) as params:
        if not params:
            raise TeftError("the expert map selects no experts: nothing to train; use a larger budget")
        return train_loop(model, params, batches, cfg, progress=progress, should_stop=should_stop)
