"""A light miner's pack: everything a miner needs of the base model, in one deterministic file.

`python -m teft pack` turns a base checkpoint and an expert map into one safetensors file: the hub and the
selected experts in the checkpoint's dtype (fused experts hold only the selected rows, in map order), the
background experts as the light model's codes and scales (teft.light), and in the metadata the config, the
tokenizer files, the expert map, the background and the base model's hash. Anyone holding the base model
builds the same bytes, so the file is named by its sha256 and a manifest can pin it.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from teft.errors import TeftError
from teft.files import atomic_write, content_hash

FORMAT = "teft-miner-pack/1"
METADATA_KEY = "teft"
# files of a checkpoint directory that travel in the pack's metadata, besides config.json (base64: any bytes)
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")


def build_pack(spec: str | os.PathLike, expert_map, background: str, dtype: str = "auto") -> bytes:
    """The pack's bytes: a light load of the checkpoint (never its whole background at full precision)."""
    from teft.light import load_light_model
    from teft.model import model_hash, resolve_model_path

    if background == "bf16":
        raise TeftError("a pack holds a low-bit background: use --background int8 or 4bit")
    path = resolve_model_path(spec)
    model, _, layout = load_light_model(path, expert_map, background, dtype=dtype)
    tensors: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():  # tied weights once, under their first name
        tensors[name] = param.detach().contiguous()
    persistent = set(model.state_dict().keys())
    for name, buf in model.named_buffers():
        if name in persistent or name.rsplit(".", 1)[-1].startswith("_teft_"):
            tensors[name] = buf.detach().contiguous()
    files = {name: base64.b64encode((path / name).read_bytes()).decode()
             for name in SIDE_FILES if (path / name).is_file()}
    info = {"format": FORMAT, "background": background, "dtype": str(next(model.parameters()).dtype),
            "model_hash": model_hash(path), "config": (path / "config.json").read_text(),
            "expert_map": expert_map.to_json(), "files": files, "layers": [m.layer for m in layout.layers]}
    # one metadata key holding canonical JSON: safetensors writes its metadata map in a per-process order
    return st_save(tensors, metadata={METADATA_KEY: json.dumps(info, sort_keys=True, separators=(",", ":"))})


def pack_name(data: bytes) -> str:
    """A pack's file name: its content hash."""
    return f"{content_hash(data)}.teftpack"


def write_pack(data: bytes, out_dir: str | os.PathLike) -> Path:
    """Write a pack atomically under its content-hash name and return the path."""
    out = Path(out_dir) / pack_name(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, data)
    return out


def read_pack(data: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a pack, or a one-line error when the bytes are not one."""
    metadata = pack_info(data)
    try:
        tensors = st_load(data)
    except Exception as err:  # safetensors raises its own error types for malformed data
        raise TeftError(f"not a miner pack (unreadable safetensors: {err}); build one with `python -m teft pack`"
                        ) from err
    return tensors, metadata


def pack_info(data: bytes) -> dict:
    """A pack's metadata from its header alone (no tensor is read), or a one-line error."""
    try:
        size = int.from_bytes(data[:8], "little")  # safetensors: u64 header length, then the JSON header
        if not 0 < size <= min(len(data) - 8, 100 << 20):
            raise ValueError(f"header length {size} does not fit the {len(data)} bytes")
        metadata = json.loads((json.loads(data[8:8 + size]).get("__metadata__") or {}).get(METADATA_KEY, "{}"))
    except (ValueError, AttributeError) as err:
        raise TeftError(f"not a miner pack ({err}); build one with `python -m teft pack`") from None
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if found != FORMAT:
        raise TeftError(f"not a miner pack (format {found!r}, expected {FORMAT}); build one with `python -m teft pack`")
    return metadata


def load_pack(data: bytes, device: str = "cpu"):
    """A light miner's model from a pack alone: (model, tokenizer or None, layout, expert map).

    The model is built on the meta device from the pack's config and every tensor is the pack's own (no
    weight of the base checkpoint is read or allocated); buffers the pack does not carry (rotary tables)
    are recomputed by transformers' own initialisation of the modules that hold them.
    """
    import tempfile

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from teft.light import LightExperts
    from teft.model import discover_layout, get_module
    from teft.selection import ExpertMap

    tensors, info = read_pack(data)
    expert_map = ExpertMap.from_json(info["expert_map"], "the pack's expert map")
    dtype = getattr(torch, info["dtype"].removeprefix("torch."))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(info["config"])
        for name, text in info["files"].items():
            (Path(tmp) / name).write_bytes(base64.b64decode(text))
        config = AutoConfig.from_pretrained(tmp, local_files_only=True)
        tokenizer = None
        if any(n.startswith(("tokenizer", "vocab")) for n in info["files"]):
            tokenizer = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    layout = discover_layout(model)
    lights = {}
    for moe in layout.layers:
        experts = get_module(model, moe.experts)
        light = LightExperts(experts, moe.num_experts, list(expert_map.layers.get(moe.layer, [])),
                             info["background"], dict(moe.params), dtype)
        for param, _ in moe.params:
            light.pending[param] = (tensors.pop(f"{moe.experts}._teft_codes_{param}"),
                                    tensors.pop(f"{moe.experts}._teft_scales_{param}"))
            light.taken.add(param)
        lights[moe.experts] = light
    for name, tensor in tensors.items():
        owner_path, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        if leaf in owner._parameters:
            owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)
        elif leaf in owner._buffers:
            owner._buffers[leaf] = tensor
        else:
            raise TeftError(f"the pack holds {name}, which this model does not have: the pack is damaged")
    model.tie_weights()
    for light in lights.values():
        light.finish()
    for path, module in model.named_modules():  # what the pack does not carry: non-persistent buffers only
        missing = [n for n, b in module.named_buffers(recurse=False) if b.is_meta]
        if not missing:
            continue
        if any(p.is_meta for p in module.parameters(recurse=False)) or list(module.parameters(recurse=False)):
            raise TeftError(f"the pack lacks {path}'s tensors: it is damaged or from another teft version")
        for n in missing:
            module._buffers[n] = torch.empty_like(module._buffers[n], device="cpu")
        model._init_weights(module)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise TeftError(f"the pack lacks {left[0]} (and {len(left) - 1} more): it is damaged or incomplete")
    model.eval()
    model.to(device)
    for light in lights.values():
        light.to(device)
    return model, tokenizer, layout, expert_map
