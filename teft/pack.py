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
    try:
        tensors = st_load(data)
        size = int.from_bytes(data[:8], "little")  # safetensors: u64 header length, then the JSON header
        metadata = json.loads((json.loads(data[8:8 + size]).get("__metadata__") or {}).get(METADATA_KEY, "{}"))
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise TeftError(f"not a miner pack (unreadable safetensors: {err}); build one with `python -m teft pack`"
                        ) from err
    if metadata.get("format") != FORMAT:
        raise TeftError(f"not a miner pack (format {metadata.get('format')!r}, expected {FORMAT}); "
                        "build one with `python -m teft pack`")
    return tensors, metadata
