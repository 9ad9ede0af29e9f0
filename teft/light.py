"""A light miner's model: the non-selected ("background") experts frozen in int8 or 4 bits.

A miner trains only the selected experts, yet the others still shape every hidden state its loss sees, so
they cannot be dropped (the selected experts learn to stand in for them, which does not carry over to the
full model; see teft/assets/studies/light_miner.md). They can be held small: each fused experts tensor
[E, ...] is replaced by the selected rows [k, ...] in the checkpoint's dtype, and the background rows live
as bitsandbytes codes (4-bit NF4 in blocks of 64 values, or int8 with one scale per output row) in buffers
of the experts module. The experts' forward expands one background expert at a time, and under autograd
recomputes it in backward (activation checkpointing), so no full-precision copy of the background, nor of
one layer of it, is ever alive. Loading goes through transformers' own weight conversion with one hook that
quantizes each fused tensor as soon as it is built: at most one layer's tensor exists at full precision.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from teft.errors import TeftError

BACKGROUNDS = ("bf16", "int8", "4bit")  # bf16: the full model in its own dtype (any float checkpoint dtype)
LIGHT_ATTR = "_teft_light"  # the LightExperts of a fused experts module that holds a low-bit background
BLOCK = 64  # values per 4-bit block (one absmax each)


def check_background(name: str) -> str:
    """The background name, or a one-line error naming the choices."""
    if name not in BACKGROUNDS:
        raise TeftError(f"unknown background '{name}'; use one of {', '.join(BACKGROUNDS)}")
    return name


def _bnb():
    try:
        import bitsandbytes.functional as bnbf
    except ImportError as err:  # pragma: no cover - a dependency of the project
        raise TeftError(f"a low-bit background needs bitsandbytes ({err}); pip install 'bitsandbytes==0.50.2' "
                        "or train with --background bf16") from err
    return bnbf


def quantize(weight: torch.Tensor, background: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One expert's tensor -> (codes, scales) in the background's form (bitsandbytes' functional kernels)."""
    bnbf = _bnb()
    if background == "4bit":
        packed, state = bnbf.quantize_4bit(weight.contiguous(), blocksize=BLOCK, quant_type="nf4")
        return packed.reshape(-1), state.absmax.float().reshape(-1)
    if background == "int8":
        codes, stats, _ = bnbf.int8_vectorwise_quant(weight.reshape(-1, weight.shape[-1]).contiguous())
        return codes.reshape(weight.shape), stats.float().reshape(-1)
    raise TeftError(f"background '{background}' is not a low-bit form: use int8 or 4bit")


def dequantize(codes: torch.Tensor, scales: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype,
               background: str) -> torch.Tensor:
    """One expert's codes back to a tensor of `shape` in `dtype`."""
    bnbf = _bnb()
    if background == "4bit":
        return _decode_nf4(codes, scales, shape, dtype)
    out = bnbf.int8_vectorwise_dequant(codes.reshape(-1, shape[-1]), scales)
    return out.to(dtype).reshape(shape)


def _decode_nf4(codes: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """bitsandbytes' NF4 layout decoded in torch: two codes per byte (high nibble first), one absmax per block.

    Not bitsandbytes.functional.dequantize_4bit: with bitsandbytes 0.50.2 and torch 2.13 its CPU kernel decodes
    the library's own quantize_4bit output wrongly (relative error 0.26 on Gaussian weights, against 0.09 for this
    decode and for the library's pure-torch reference path); see the README's light-miner section."""
    numel = 1
    for s in shape:
        numel *= s
    table = _nf4_table(codes.device)
    q = torch.stack((codes >> 4, codes & 15), dim=-1).reshape(-1)[:numel].long()
    values = table[q]
    pad = -numel % BLOCK
    if pad:
        values = torch.nn.functional.pad(values, (0, pad))
    return (values.view(-1, BLOCK) * absmax.view(-1, 1)).reshape(-1)[:numel].view(shape).to(dtype)


_TABLES: dict[str, torch.Tensor] = {}


def _nf4_table(device: torch.device) -> torch.Tensor:
    key = str(device)
    if key not in _TABLES:
        _TABLES[key] = _bnb().get_4bit_type("nf4", device=device).float()
    return _TABLES[key]


def code_sizes(shape: tuple[int, ...], background: str) -> tuple[int, int]:
    """Bytes of one expert tensor's codes and of its scales (fp32) in a background form."""
    numel = 1
    for s in shape:
        numel *= s
    if background == "4bit":
        return (numel + 1) // 2, 4 * -(-numel // BLOCK)
    if background == "int8":
        return numel, 4 * (numel // shape[-1])
    raise TeftError(f"background '{background}' is not a low-bit form: use int8 or 4bit")


class LightExperts:
    """The state of one fused experts module with a low-bit background, and its forward.

    The module's parameters hold only the selected rows (in `ids` order, the checkpoint's dtype) and its
    `num_experts` is their count, so the class's own forward computes them given local indices; background
    expert j (the j-th unselected one) is held as buffers `_teft_codes_{param}` / `_teft_scales_{param}`.
    """

    def __init__(self, experts: nn.Module, num_experts: int, ids: list[int], background: str,
                 shapes: dict[str, tuple[int, ...]], dtype: torch.dtype):
        self.experts, self.num_experts, self.ids = experts, num_experts, sorted(ids)
        self.background, self.shapes, self.dtype = background, dict(shapes), dtype
        self.call = type(experts).forward
        self.rest = [e for e in range(num_experts) if e not in set(self.ids)]
        self.taken: set[str] = set()
        self.pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def take(self, param: str, full: torch.Tensor) -> None:
        """Quantize a fused tensor's background rows one expert at a time; keep its selected rows."""
        shape = self.shapes[param]
        if tuple(full.shape) != (self.num_experts, *shape):
            raise TeftError(f"{param} has shape {list(full.shape)}, the layout expects "
                            f"{[self.num_experts, *shape]}: the checkpoint is for another model")
        code_bytes, scale_bytes = code_sizes(shape, self.background)
        codes = torch.empty((len(self.rest), code_bytes) if self.background == "4bit" else (len(self.rest), *shape),
                            dtype=torch.uint8 if self.background == "4bit" else torch.int8, device=full.device)
        scales = torch.empty((len(self.rest), scale_bytes // 4), dtype=torch.float32, device=full.device)
        with torch.no_grad():
            for j, e in enumerate(self.rest):
                c, s = quantize(full[e].to(self.dtype), self.background)
                codes[j].copy_(c.reshape(codes[j].shape))
                scales[j].copy_(s)
            rows = full[self.ids].to(self.dtype) if self.ids else full.new_empty((0, *shape), dtype=self.dtype)
        # registered as buffers only in finish(): transformers' loader refills the non-persistent buffers it finds
        # with torch.empty_like once the weights are in (they are "not part of the loaded weights")
        self.pending[param] = (codes, scales)
        kept = nn.Parameter(rows.contiguous(), requires_grad=False)
        kept._is_hf_initialized = True  # transformers must not re-initialise it after loading
        self.experts._parameters[param] = kept
        self.taken.add(param)

    def finish(self) -> None:
        """Route the experts module's forward through this background; check every tensor was taken."""
        missing = sorted(set(self.shapes) - self.taken)
        if missing:
            raise TeftError(f"the checkpoint gave no {missing[0]} for {type(self.experts).__name__}: "
                            "it is damaged or for another model")
        for param, (codes, scales) in self.pending.items():
            self.experts.register_buffer(f"_teft_codes_{param}", codes, persistent=False)
            self.experts.register_buffer(f"_teft_scales_{param}", scales, persistent=False)
        self.pending = {}
        device = getattr(self.experts, f"_teft_codes_{next(iter(self.shapes))}").device
        self.local = torch.full((self.num_experts,), -1, dtype=torch.long, device=device)
        self.local[torch.tensor(self.ids, dtype=torch.long, device=device)] = torch.arange(len(self.ids), device=device)
        self.rest_local = torch.full((self.num_experts,), -1, dtype=torch.long, device=device)
        self.rest_local[torch.tensor(self.rest, dtype=torch.long, device=device)] = torch.arange(len(self.rest),
                                                                                                device=device)
        self.experts.num_experts = len(self.ids)
        self.experts.forward = self.forward
        setattr(self.experts, LIGHT_ATTR, self)

    def to(self, device) -> None:
        self.local, self.rest_local = self.local.to(device), self.rest_local.to(device)

    def expert(self, j: int) -> dict[str, torch.Tensor]:
        """Background expert j at the checkpoint's dtype, shaped [1, ...] like a fused tensor of one expert."""
        out = {}
        for param, shape in self.shapes.items():
            codes = getattr(self.experts, f"_teft_codes_{param}")[j]
            scales = getattr(self.experts, f"_teft_scales_{param}")[j]
            out[param] = dequantize(codes, scales, shape, self.dtype, self.background).unsqueeze(0)
        return out

    def _one(self, hidden: torch.Tensor, weights: torch.Tensor, j: int, *args, **kwargs) -> torch.Tensor:
        from teft.train import _swapped

        index = torch.zeros((hidden.shape[0], 1), dtype=torch.long, device=hidden.device)
        with _swapped(self.experts, self.expert(j), num_experts=1):
            return self.call(self.experts, hidden, index, weights, *args, **kwargs)

    def background_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                           top_k_weights: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The background experts' share of the output, one expanded expert at a time (selected pairs skip)."""
        out = torch.zeros_like(hidden_states)
        j_of = self.rest_local[top_k_index.clamp(0, self.num_experts - 1)].masked_fill(
            top_k_index >= self.num_experts, -1)
        grad = torch.is_grad_enabled() and (hidden_states.requires_grad or top_k_weights.requires_grad)
        for j in torch.unique(j_of[j_of >= 0]).tolist():
            rows, slots = (j_of == j).nonzero(as_tuple=True)
            x, w = hidden_states[rows], top_k_weights[rows, slots].unsqueeze(1)
            if grad:  # keep only x and w for backward; the expert is expanded again there
                y = checkpoint(self._one, x, w, j, *args, use_reentrant=False, **kwargs)
            else:
                y = self._one(x, w, j, *args, **kwargs)
            out.index_add_(0, rows, y.to(out.dtype))
        return out

    def selected_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                         top_k_weights: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The selected experts' share, from the module's own [k, ...] rows."""
        local = self.local[top_k_index.clamp(0, self.num_experts - 1)]
        rows, slots = ((local >= 0) & (top_k_index < self.num_experts)).nonzero(as_tuple=True)
        out = torch.zeros_like(hidden_states)
        if rows.numel():
            picked = self.call(self.experts, hidden_states[rows], local[rows, slots].unsqueeze(1),
                               top_k_weights[rows, slots].unsqueeze(1), *args, **kwargs)
            out.index_add_(0, rows, picked.to(out.dtype))
        return out

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                *args, **kwargs) -> torch.Tensor:
        return (self.background_forward(hidden_states, top_k_index, top_k_weights, *args, **kwargs)
                + self.selected_forward(hidden_states, top_k_index, top_k_weights, *args, **kwargs))


def light_of(experts: nn.Module) -> LightExperts | None:
    return getattr(experts, LIGHT_ATTR, None)


def _plans(model: nn.Module, layout, expert_map, background: str, dtype: torch.dtype) -> dict[str, tuple]:
    """parameter name -> (LightExperts, param) for every fused expert tensor of the model."""
    from teft.model import get_module

    plans = {}
    for moe in layout.layers:
        if not moe.fused:
            raise TeftError(f"a {background} background needs fused expert tensors (transformers 5 layout); this "
                            f"{layout.model_type} model keeps one module per expert: use --background bf16")
        experts = get_module(model, moe.experts)
        light = LightExperts(experts, moe.num_experts, list(expert_map.layers.get(moe.layer, [])), background,
                             dict(moe.params), dtype)
        for param, _ in moe.params:
            plans[f"{moe.experts}.{param}"] = (light, param)
    return plans


def _finish(plans: dict[str, tuple]) -> None:
    for light in {id(light): light for light, _ in plans.values()}.values():
        light.finish()


@torch.no_grad()
def lighten(model: nn.Module, layout, expert_map, background: str) -> nn.Module:
    """Turn a loaded full model into a light one in place (for tests and studies; a miner loads light)."""
    check_background(background)
    if background == "bf16":
        return model
    dtype = next(model.parameters()).dtype
    plans = _plans(model, layout, expert_map, background, dtype)
    for light, param in plans.values():
        full = light.experts._parameters[param]
        light.take(param, full.detach())
        del full
    _finish(plans)
    return model


@contextlib.contextmanager
def _quantizing_loader(expert_map, background: str, dtype: torch.dtype, found: dict) -> Iterator[None]:
    """While inside, transformers' loader hands each fused expert tensor to a LightExperts as soon as it is
    converted (one tensor at a time: async loading off), instead of setting it on the model."""
    from transformers import core_model_loading

    from teft.model import discover_layout

    original = getattr(core_model_loading, "set_param_for_module", None)
    if original is None:
        raise TeftError("this transformers version has no core_model_loading.set_param_for_module, which light "
                        "loading hooks; use transformers 5.x or --background bf16")

    def hooked(model, target_name, param_value, loading_info, *args, **kwargs):
        if "plans" not in found:
            found["layout"] = discover_layout(model)
            found["plans"] = _plans(model, found["layout"], expert_map, background, dtype)
        plan = found["plans"].get(target_name)
        if plan is None:
            return original(model, target_name, param_value, loading_info, *args, **kwargs)
        loading_info.missing_keys.discard(target_name)
        light, param = plan
        light.take(param, param_value.detach())
        return None

    saved_env = os.environ.get("HF_DEACTIVATE_ASYNC_LOAD")
    os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"  # sequential: no thread reads a later layer ahead
    core_model_loading.set_param_for_module = hooked
    try:
        yield
    finally:
        core_model_loading.set_param_for_module = original
        if saved_env is None:
            os.environ.pop("HF_DEACTIVATE_ASYNC_LOAD", None)
        else:
            os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = saved_env


def load_light_model(spec, expert_map, background: str, dtype="auto", device: str = "cpu"):
    """Load a checkpoint as a light miner's model: (model, tokenizer, layout) with a low-bit background.

    The layout is the full model's (discovered before any tensor is replaced); the expert map must be known
    first, since its experts are the ones kept at full precision.
    """
    from teft.model import load_model

    check_background(background)
    if background == "bf16":
        from teft.model import discover_layout

        model, tokenizer = load_model(spec, dtype=dtype, device=device)
        return model, tokenizer, discover_layout(model)
    found: dict = {}
    from teft.model import checkpoint_dtype, parse_dtype, resolve_model_path

    want = parse_dtype(dtype)
    want = checkpoint_dtype(resolve_model_path(spec)) if want == "auto" else want
    with _quantizing_loader(expert_map, background, want, found):
        model, tokenizer = load_model(spec, dtype=dtype, device="cpu")
    if "plans" not in found:
        raise TeftError("the loader set no tensors through the light hook: this transformers version loads "
                        "differently; use --background bf16")
    _finish(found["plans"])
    model.to(device)
    for light, _ in found["plans"].values():
        light.to(device)
    return model, tokenizer, found["layout"]


@dataclass(frozen=True)
class Resident:
    """Bytes a model holds, split the way the memory table reports them."""

    frozen_full: int  # hub and selected experts in the checkpoint's dtype
    background: int  # low-bit codes and scales of the unselected experts (0 for bf16: they are in frozen_full)

    @property
    def total(self) -> int:
        return self.frozen_full + self.background


def resident_bytes(model: nn.Module) -> Resident:
    """What a (light or full) model holds in parameters and buffers."""
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    background = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if "._teft_" in f".{n}")
    full += sum(b.numel() * b.element_size() for n, b in model.named_buffers() if "._teft_" not in f".{n}")
    return Resident(full, background)
