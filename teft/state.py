"""ExpertState: the selected expert slices, the only tensors that ever leave a peer.

A state is an ordered mapping `layers.{L}.experts.{e}.{param}` -> tensor. Its canonical bytes are a
safetensors file with keys in (layer, expert, param) order and one fixed dtype, so two peers holding
the same numbers produce the same bytes and the same hash, and a receiver knows the exact size in
advance from the expert map alone.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from teft.errors import TeftError
from teft.files import atomic_write, content_hash
from teft.model import MoELayout, expert_tensor
from teft.selection import ExpertMap

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_KEY = re.compile(r"^layers\.(\d+)\.experts\.(\d+)\.(.+)$")
_METADATA = {"format": "teft-expert-state"}

ExpertState = OrderedDict  # name -> tensor, canonical order


def state_key(layer: int, expert: int, param: str) -> str:
    return f"layers.{layer}.experts.{expert}.{param}"


def parse_key(key: str) -> tuple[int, int, str]:
    match = _KEY.match(key)
    if not match:
        raise TeftError(f"'{key}' is not an expert-state key (layers.L.experts.E.param)")
    return int(match.group(1)), int(match.group(2)), match.group(3)


def expected_shapes(layout: MoELayout, expert_map: ExpertMap) -> OrderedDict[str, tuple[int, ...]]:
    """Every key a state for this map must have, with its shape, in canonical order."""
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    for layer in sorted(expert_map.layers):
        moe = layout.layer(layer)
        for expert in sorted(expert_map.layers[layer]):
            if not 0 <= expert < moe.num_experts:
                raise TeftError(f"expert map selects expert {expert} in layer {layer}, "
                                f"but that layer has {moe.num_experts} experts: the map is for another model")
            for param, shape in moe.params:
                shapes[state_key(layer, expert, param)] = shape
    return shapes


def canonical(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> ExpertState:
    """Sorted keys, contiguous CPU tensors of one dtype: the form that is hashed and sent."""
    ordered = OrderedDict()
    for key in sorted(state, key=parse_key):
        ordered[key] = state[key].detach().to(device="cpu", dtype=dtype).contiguous()
    return ordered


def extract_state(model: nn.Module, layout: MoELayout, expert_map: ExpertMap,
                  dtype: torch.dtype = torch.float32) -> ExpertState:
    """Copy the selected expert slices out of a model."""
    return extract_keys(model, layout, expected_shapes(layout, expert_map), dtype)


def extract_keys(model: nn.Module, layout: MoELayout, keys, dtype: torch.dtype = torch.float32) -> ExpertState:
    """Copy out the model's current values for the keys of some state (to restore or interpolate)."""
    state = OrderedDict()
    for key in sorted(keys, key=parse_key):
        layer, expert, param = parse_key(key)
        tensor = expert_tensor(model, layout.layer(layer), expert, param)
        state[key] = tensor.detach().to(device="cpu", dtype=dtype).clone()
    return state


@torch.no_grad()
def load_state(model: nn.Module, layout: MoELayout, state: dict[str, torch.Tensor]) -> None:
    """Write a state's slices into the model in place (no copy of the model)."""
    for key, value in state.items():
        layer, expert, param = parse_key(key)
        target = expert_tensor(model, layout.layer(layer), expert, param)
        if tuple(target.shape) != tuple(value.shape):
            raise TeftError(f"state tensor {key} has shape {list(value.shape)}, the model expects "
                            f"{list(target.shape)}: the state is for another model")
        target.copy_(value.to(device=target.device, dtype=target.dtype))


def check_state_layout(state: dict[str, torch.Tensor], layout: MoELayout) -> None:
    """Refuse a state this model cannot take (unknown layer, expert or tensor, other shape, non-finite), before use."""
    if not state:
        raise TeftError("the state holds no expert tensors; pass a state written by `teft train --out`")
    for key, tensor in state.items():
        layer, expert, param = parse_key(key)
        moe = layout.layer(layer)
        if not 0 <= expert < moe.num_experts:
            raise TeftError(f"state tensor {key} names expert {expert}, but this model's experts are "
                            f"0..{moe.num_experts - 1}: the state is for another model")
        shapes = dict(moe.params)
        if param not in shapes:
            raise TeftError(f"state tensor {key}: this model's experts have no tensor '{param}' (they have "
                            f"{', '.join(shapes)}): the state is for another model")
        if tuple(tensor.shape) != tuple(shapes[param]):
            raise TeftError(f"state tensor {key} has shape {list(tensor.shape)}, this model's is "
                            f"{list(shapes[param])}: the state is for another model")
        if not torch.isfinite(tensor).all():
            raise TeftError(f"state tensor {key} has non-finite values; the state is damaged, train it again")


def to_bytes(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> bytes:
    return st_save(dict(canonical(state, dtype)), metadata=_METADATA)


def from_bytes(data: bytes) -> ExpertState:
    try:
        loaded = st_load(data)
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise TeftError(f"not a valid safetensors expert state: {err}") from err
    return OrderedDict((k, loaded[k]) for k in sorted(loaded, key=parse_key))


state_hash = content_hash  # a state file's name on the network and on disk


def expected_size(layout: MoELayout, expert_map: ExpertMap, dtype: torch.dtype = torch.float32) -> int:
    """Exact byte length of a valid state for this map, so a receiver can refuse anything longer."""
    zeros = {k: torch.zeros(s, dtype=dtype) for k, s in expected_shapes(layout, expert_map).items()}
    return len(to_bytes(zeros, dtype))


def check_state(state: dict[str, torch.Tensor], layout: MoELayout, expert_map: ExpertMap,
                dtype: torch.dtype | None = None, max_norm: float | None = None,
                reference: dict[str, torch.Tensor] | None = None) -> str | None:
    """Why a state must not be used (wrong keys, shape, dtype, non-finite, delta norm), or None if fine."""
    shapes = expected_shapes(layout, expert_map)
    if set(state) != set(shapes):
        extra, missing = sorted(set(state) - set(shapes)), sorted(set(shapes) - set(state))
        return f"wrong key set (extra {extra[:3]}, missing {missing[:3]})"
    sq = 0.0
    for key, shape in shapes.items():
        tensor = state[key]
        if tuple(tensor.shape) != tuple(shape):
            return f"{key} has shape {list(tensor.shape)}, expected {list(shape)}"
        if dtype is not None and tensor.dtype != dtype:
            return f"{key} has dtype {tensor.dtype}, expected {dtype}"
        if not torch.isfinite(tensor).all():
            return f"{key} has non-finite values"
        if reference is not None:
            sq += float((tensor.float() - reference[key].float()).pow(2).sum())
    if max_norm is not None and reference is not None and sq ** 0.5 > max_norm:
        return f"delta norm {sq ** 0.5:.4g} exceeds the bound {max_norm:.4g}"
    return None


def save_state(state: dict[str, torch.Tensor], path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> str:
    """Atomically write a state file and return its hash."""
    data = to_bytes(state, dtype)
    atomic_write(Path(path), data)
    return state_hash(data)


def load_state_file(path: str | os.PathLike) -> ExpertState:
    path = Path(path)
    if not path.is_file():
        raise TeftError(f"state file '{path}' does not exist; pass the .safetensors file written by "
                        "`teft train --out` or by a swarm peer")
    return from_bytes(path.read_bytes())
