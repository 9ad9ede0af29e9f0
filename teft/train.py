"""Sparse inner loop: AdamW on fp32 master copies of the selected expert slices only.

transformers 5 keeps a layer's experts in one fused [E, ...] tensor, so `requires_grad` cannot pick
experts, and any trick that rebuilds the fused tensor (a parametrization, an index_copy) allocates a
full copy per forward. Instead the experts module's forward is split per (token, expert) pair: pairs
routed to an unselected expert run through the frozen fused weights with no weight gradient, and pairs
routed to a selected expert run through the same experts code with a small [k, ...] slice cast from the
fp32 master. Optimizer state exists only for the masters; on exit they are written back (cast to the
model's dtype) and everything but the selected slices is bit-identical. Per-expert modules get the same
treatment: their forward runs with the master tensors swapped in. On a light model (teft.light) the frozen
pass is the low-bit background's, expanded one expert at a time, and the module holds only the selected rows.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from teft.errors import TeftError
from teft.model import MoELayout, decoder_and_head, expert_tensor, get_module
from teft.selection import ExpertMap
from teft.state import ExpertState, canonical, state_key

# Logit elements (rows x vocabulary) per chunk of lm_loss. A chunk holds up to 12 bytes per element alive at
# once, whatever the head's dtype (measured on CPU with torch's profiler, bf16 and fp32 heads): in forward the
# logits, their fp32 copy and the log-softmax; in the backward's recompute the log-softmax again, its gradient
# and the logits' gradient. At 2^26 elements that is 768 MiB, not the 256 MiB of the fp32 logits alone.
_LOSS_CHUNK_ELEMENTS = 1 << 26


@contextlib.contextmanager
def _swapped(module: nn.Module, tensors: dict[str, torch.Tensor], **attrs) -> Iterator[None]:
    """Run with some parameters (dotted names) replaced by other tensors and some attributes changed."""
    saved, saved_attrs = {}, {}
    try:
        for name, tensor in tensors.items():
            owner_path, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            saved[name] = (owner, leaf, owner._parameters[leaf])
            owner._parameters[leaf] = tensor
        for key, value in attrs.items():
            saved_attrs[key] = getattr(module, key)
            setattr(module, key, value)
        yield
    finally:
        for owner, leaf, original in saved.values():
            owner._parameters[leaf] = original
        for key, value in saved_attrs.items():
            setattr(module, key, value)


class _FusedSelection:
    """The selected experts of one fused experts module: fp32 masters and the split forward."""

    def __init__(self, experts: nn.Module, ids: list[int], params: list[str], init: dict[str, torch.Tensor]):
        from teft.light import light_of

        self.experts, self.params = experts, params
        first = getattr(experts, params[0])
        self.light = light_of(experts)  # a low-bit background: the module holds only the selected rows
        if self.light is not None and sorted(ids) != self.light.ids:
            raise TeftError(f"this light model holds experts {self.light.ids} at full precision, the expert map "
                            f"selects {sorted(ids)}: load the model for the map it trains")
        self.num_experts = self.light.num_experts if self.light is not None else first.shape[0]
        device = first.device
        self.index = torch.tensor(ids, dtype=torch.long, device=device)
        # where the selected experts' rows sit in the module's tensors (all E rows, or only the k selected)
        self.rows = torch.arange(len(ids), device=device) if self.light is not None else self.index
        self.local = torch.full((self.num_experts,), -1, dtype=torch.long, device=device)
        self.local[self.index] = torch.arange(len(ids), device=device)
        self.masters = {p: nn.Parameter(init[p].to(device=device, dtype=torch.float32).contiguous()) for p in params}
        self.call = type(experts).forward
        config = getattr(experts, "config", None)
        # transformers' grouped_mm experts skip an out-of-range expert id (its expert-parallel sentinel), so
        # the frozen pass need not compute the selected pairs at all; other implementations get weight 0
        self.sentinel = (getattr(config, "_experts_implementation", None) == "grouped_mm"
                         and hasattr(experts, "_is_expert_parallel"))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                *args, **kwargs) -> torch.Tensor:
        local = self.local[top_k_index.clamp(0, self.num_experts - 1)]
        chosen = (local >= 0) & (top_k_index < self.num_experts)
        frozen_weights = top_k_weights.masked_fill(chosen, 0.0)
        if self.light is not None:  # background experts expanded one at a time; the selected ones skipped
            out = self.light.background_forward(hidden_states, top_k_index, frozen_weights, *args, **kwargs)
        elif self.sentinel:
            with _swapped(self.experts, {}, _is_expert_parallel=True):
                out = self.call(self.experts, hidden_states, top_k_index.masked_fill(chosen, self.num_experts),
                                frozen_weights, *args, **kwargs)
        else:
            out = self.call(self.experts, hidden_states, top_k_index, frozen_weights, *args, **kwargs)
        rows, slots = chosen.nonzero(as_tuple=True)
        if rows.numel() == 0:
            return out
        dtype = getattr(self.experts, self.params[0]).dtype
        slices = {p: m.to(dtype) for p, m in self.masters.items()}
        with _swapped(self.experts, slices, num_experts=len(self.index)):
            picked = self.call(self.experts, hidden_states[rows], local[rows, slots].unsqueeze(1),
                               top_k_weights[rows, slots].unsqueeze(1), *args, **kwargs)
        return out.index_add_(0, rows, picked.to(out.dtype))  # in place: autograd refuses it if out was saved

    @torch.no_grad()
    def write_back(self) -> None:
        for p, master in self.masters.items():
            full = getattr(self.experts, p)
            full.index_copy_(0, self.rows, master.detach().to(full.dtype))


class _ModuleSelection:
    """One selected expert that is its own module: its forward runs with the fp32 masters swapped in."""

    def __init__(self, expert: nn.Module, init: dict[str, torch.Tensor]):
        self.expert = expert
        self.call = type(expert).forward
        self.masters = {n: nn.Parameter(init[n].to(device=p.device, dtype=torch.float32).contiguous())
                        for n, p in expert.named_parameters()}

    def forward(self, *args, **kwargs):
        tensors = {n: m.to(self.expert.get_parameter(n).dtype) for n, m in self.masters.items()}
        with _swapped(self.expert, tensors):
            return self.call(self.expert, *args, **kwargs)

    @torch.no_grad()
    def write_back(self) -> None:
        for n, master in self.masters.items():
            target = self.expert.get_parameter(n)
            target.copy_(master.detach().to(target.dtype))


ParamKeys = str | list[str]  # a parameter's moments key: one for the whole tensor, or one per row (dim 0)


class TrainableSlices(list):
    """The fp32 master parameters being trained (a list, for the optimizer) and the state they form."""

    def __init__(self):
        super().__init__()
        self.keys: list[tuple[str, nn.Parameter, int | None]] = []  # (state key, master, row or None)

    def param_keys(self) -> list[ParamKeys]:
        """The expert-state keys of each master, in list order: one key for a whole tensor, one per row of a
        fused selection. Optimizer state keyed this way saves and loads as a state, whatever the masters are."""
        out: list[ParamKeys] = []
        for master in self:
            rows = sorted((row, key) for key, p, row in self.keys if p is master and row is not None)
            out.append([key for _, key in rows] if rows else next(k for k, p, _ in self.keys if p is master))
        return out

    def state(self) -> ExpertState:
        """The masters as an fp32 ExpertState (canonical order), without rounding to the model's dtype."""
        return canonical({key: (master[row] if row is not None else master)
                          for key, master, row in self.keys}, torch.float32)


@contextlib.contextmanager
def trainable_experts(model: nn.Module, layout: MoELayout, expert_map: ExpertMap,
                      init: dict[str, torch.Tensor] | None = None) -> Iterator[TrainableSlices]:
    """Freeze the whole model and yield fp32 masters of the selected experts; write them back on exit.

    `init` (an ExpertState) seeds the masters at full precision, e.g. the agreed fp32 state of a cycle on a
    bf16 model; by default they start from the model's own values. On exit, even on error, the trained
    values are in the model (cast to its dtype) and every parameter's requires_grad is as it was.
    """
    previous = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    slices = TrainableSlices()
    selections: list[_FusedSelection | _ModuleSelection] = []

    def start(key: str, tensor: torch.Tensor) -> torch.Tensor:
        return init[key] if init is not None and key in init else tensor.detach()

    try:
        for layer in sorted(expert_map.layers):
            ids = sorted(expert_map.layers[layer])
            if not ids:
                continue
            moe = layout.layer(layer)
            experts = get_module(model, moe.experts)
            names = [n for n, _ in moe.params]
            if moe.fused:
                values = {n: torch.stack([start(state_key(layer, e, n), expert_tensor(model, moe, e, n)).float()
                                          .to(getattr(experts, n).device) for e in ids]) for n in names}
                selection = _FusedSelection(experts, ids, names, values)
                for n in names:
                    slices.append(selection.masters[n])
                    slices.keys += [(state_key(layer, e, n), selection.masters[n], row) for row, e in enumerate(ids)]
                selection.saved_forward = experts.__dict__.get("forward")  # a light model's own forward
                experts.forward = selection.forward
                selections.append(selection)
            else:
                for e in ids:
                    values = {n: start(state_key(layer, e, n), expert_tensor(model, moe, e, n)) for n in names}
                    selection = _ModuleSelection(experts[e], values)
                    for n in names:
                        slices.append(selection.masters[n])
                        slices.keys.append((state_key(layer, e, n), selection.masters[n], None))
                    experts[e].forward = selection.forward
                    selections.append(selection)
        yield slices
    finally:
        for selection in selections:
            module = selection.experts if isinstance(selection, _FusedSelection) else selection.expert
            del module.forward
            if getattr(selection, "saved_forward", None) is not None:
                module.forward = selection.saved_forward
            selection.write_back()
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
    gradient_checkpointing: bool = False  # recompute activations in backward: pilot-size models at batch 8
    # Cross-cycle schedule: this call's first step is global step `step_offset` of a schedule that spans
    # `total_steps` (the whole run, e.g. cycles x steps); None keeps one warmup/cosine per call.
    step_offset: int = 0
    total_steps: int | None = None
    # adamw: fp32 moments; adamw8bit: bitsandbytes' blockwise 8-bit moments (a quarter of the bytes); either way
    # the moments a call returns (and takes back) are fp32 tensors under the same keys
    optimizer: str = "adamw"


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    optimizer_state_bytes: int = 0
    trainable_params: int = 0
    state: ExpertState | None = None  # train_experts: the fp32 master slices after training
    moments: dict[str, torch.Tensor] = field(default_factory=dict)  # AdamW state to carry to the next call
    steps_done: int = 0  # fewer than cfg.steps when `time_up` cut the loop short


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


def _token_losses_sum(head: nn.Linear, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(head(hidden).float(), labels, ignore_index=-100, reduction="sum")


def chunked_cross_entropy(head: nn.Linear, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss from hidden states [N, H] without holding fp32 logits for all N rows at once.

    Each chunk's logits are recomputed in backward (activation checkpointing), so the peak is one chunk's
    (12 bytes per logit element of `_LOSS_CHUNK_ELEMENTS`) whatever the batch, sequence and vocabulary.
    """
    rows = max(1, _LOSS_CHUNK_ELEMENTS // head.out_features)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], rows):
        h, y = hidden[start:start + rows], labels[start:start + rows]
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(_token_losses_sum, head, h, y, use_reentrant=False)
        else:
            total = total + _token_losses_sum(head, h, y)
    return total / (labels != -100).sum().clamp_min(1)


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
    """Next-token loss that ignores padding positions; bf16 autocast on CUDA, chunked over the vocabulary."""
    labels = input_ids[:, 1:]
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask[:, 1:] == 0, -100)
    device = input_ids.device
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        parts = decoder_and_head(model)
        if parts is None:
            full = torch.cat([labels[:, :1], labels], dim=1)  # position 0 is never a target
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels=full, use_cache=False)
            return out.loss.float()
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        return chunked_cross_entropy(head, hidden, labels.reshape(-1))


def lm_row_losses(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Each block's own mean next-token loss [B] from one decoder pass (blocks without padding): what a
    judgement needs to see how much a gain varies from block to block, not only its mean."""
    labels = input_ids[:, 1:]
    device = input_ids.device
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        parts = decoder_and_head(model)
        if parts is None:
            return torch.stack([lm_loss(model, row[None]) for row in input_ids])
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
        return torch.stack([chunked_cross_entropy(head, hidden[b], labels[b]).float() for b in range(len(labels))])


@contextlib.contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Recompute each decoder layer's activations in backward (memory for time) while inside."""
    if not enabled:
        yield
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise TeftError(f"{type(model).__name__} does not support gradient checkpointing; "
                        "train without --gradient-checkpointing")
    new_api = hasattr(model, "activation_checkpointing_enable")  # transformers >= 5.x renamed it
    was = model.is_activation_checkpointing if new_api else model.is_gradient_checkpointing
    if new_api:
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        if not was:
            (model.activation_checkpointing_disable if new_api else model.gradient_checkpointing_disable)()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values()
               for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0)


class Interrupted(Exception):
    """Training was asked to stop (a peer shutting down); the model holds a partial update."""


MOMENT_FIELDS = ("exp_avg", "exp_avg_sq", "step")  # AdamW's per-parameter state, as key suffixes




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
        _set_moments(optimizer, p, state["exp_avg"], state["exp_avg_sq"], steps.pop())


_BNB_BLOCK = 256  # bitsandbytes' 8-bit optimizers quantize their moments in blocks of 256 values


def _make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, foreach=False)
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:  # pragma: no cover - a dependency of the project
            raise TeftError(f"adamw8bit needs bitsandbytes ({err}); pip install 'bitsandbytes==0.50.2'") from err
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    raise TeftError(f"unknown optimizer '{cfg.optimizer}'; use adamw or adamw8bit")


def _set_moments(optimizer: torch.optim.Optimizer, p: nn.Parameter, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                 step: float) -> None:
    """Put fp32 moments into either optimizer's state for p (8-bit ones are quantized on the way in)."""
    if isinstance(optimizer, torch.optim.AdamW):
        optimizer.state[p] = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
                              "step": torch.tensor(step, dtype=torch.float32)}
        return
    import bitsandbytes.functional as bnbf

    optimizer.init_state(optimizer.param_groups[0], p, 0, 0)
    state = optimizer.state[p]
    state["step"] = int(step)
    pairs = ((exp_avg, "state1", "qmap1", "absmax1"), (exp_avg_sq, "state2", "qmap2", "absmax2"))
    for value, key, qmap, absmax in pairs:
        if state[key].dtype == torch.uint8:
            codes, quant = bnbf.quantize_blockwise(value.float(), code=state[qmap], blocksize=_BNB_BLOCK)
            state[key].copy_(codes.reshape(state[key].shape))
            state[absmax].copy_(quant.absmax)
        else:
            state[key].copy_(value)


def _get_moments(optimizer: torch.optim.Optimizer, p: nn.Parameter) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(exp_avg, exp_avg_sq, step) of p as fp32, whichever optimizer holds them."""
    state = optimizer.state.get(p)
    if not state:
        return None
    if isinstance(optimizer, torch.optim.AdamW):
        return state["exp_avg"], state["exp_avg_sq"], float(state["step"])
    import bitsandbytes.functional as bnbf

    out = []
    for key, qmap, absmax in (("state1", "qmap1", "absmax1"), ("state2", "qmap2", "absmax2")):
        value = state[key]
        if value.dtype == torch.uint8:
            value = bnbf.dequantize_blockwise(value, absmax=state[absmax], code=state[qmap], blocksize=_BNB_BLOCK)
        out.append(value.float().reshape(p.shape))
    return out[0], out[1], float(state["step"])


def _export_moments(optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                    keys: list[ParamKeys]) -> dict[str, torch.Tensor]:
    """AdamW's state as fp32 CPU tensors keyed `<key>.exp_avg`, `<key>.exp_avg_sq`, `<key>.step`."""
    out: dict[str, torch.Tensor] = {}
    for p, names in zip(params, keys, strict=True):
        moments = _get_moments(optimizer, p)
        if moments is None:
            continue
        step = torch.tensor(moments[2], dtype=torch.float32)
        for f, value in zip(("exp_avg", "exp_avg_sq"), moments[:2], strict=True):
            for name, part in _rows(value, names):
                out[f"{name}.{f}"] = part.detach().to(device="cpu", dtype=torch.float32).clone()
        for name in [names] if isinstance(names, str) else names:
            out[f"{name}.step"] = step.clone()
    return out


def train_loop(model: nn.Module, params: list[nn.Parameter], batches: Iterable, cfg: TrainConfig,
               progress: bool = False, desc: str = "train", should_stop: Callable[[], bool] | None = None,
               moments: dict[str, torch.Tensor] | None = None, keys: list[ParamKeys] | None = None,
               time_up: Callable[[], bool] | None = None) -> TrainResult:
    """AdamW over `params` for cfg.steps batches: warmup/cosine, clipping, loss ignoring padding.

    `time_up`: asked before each step after the first; when it says yes the loop ends there and the result
    holds what the steps so far trained (a miner on a slow machine submits a shorter update instead of none).

    `moments` (from a previous call's result) resume AdamW where it stopped instead of from zero; `keys`
    names each parameter's moments (default `params.{i}`). The result's `moments` hold the new state.
    """
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    device = params[0].device if params else torch.device("cpu")
    keys = keys if keys is not None else [f"params.{i}" for i in range(len(params))]
    if len(keys) != len(params):
        raise TeftError(f"{len(keys)} optimizer-state key lists for {len(params)} parameters: they must pair up")
    optimizer = _make_optimizer(params, cfg)
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
        if step and time_up is not None and time_up():
            break
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
        result.steps_done = step + 1
        bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
    result.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    result.moments = _export_moments(optimizer, params, keys)
    model.train(was_training)
    return result


def train_experts(model: nn.Module, layout: MoELayout, expert_map: ExpertMap, batches: Iterable,
                  cfg: TrainConfig, progress: bool = False, should_stop: Callable[[], bool] | None = None,
                  init: dict[str, torch.Tensor] | None = None, moments: dict[str, torch.Tensor] | None = None,
                  time_up: Callable[[], bool] | None = None) -> TrainResult:
    """Train only the selected experts in place; everything else stays bit-identical.

    The result's `state` holds the fp32 masters (start them from `init` to keep an fp32 state's precision on
    a bf16 model); the model holds the same values cast to its dtype. `moments`: the AdamW state a previous
    call returned (result.moments, keyed like the expert state with `.exp_avg`/`.exp_avg_sq`/`.step`
    suffixes; `teft.state.to_bytes` saves it), to keep them across cycles.
    """
    with trainable_experts(model, layout, expert_map, init=init) as params:
        if not params:
            raise TeftError("the expert map selects no experts: nothing to train; use a larger budget")
        with gradient_checkpointing(model, cfg.gradient_checkpointing):
            result = train_loop(model, params, batches, cfg, progress=progress, should_stop=should_stop,
                                moments=moments, keys=params.param_keys(), time_up=time_up)
        result.state = params.state()
    return result
