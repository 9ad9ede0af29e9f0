"""A manifest checked against its model's real shape, without the weights: `python -m swarm.protocol.shapes`.

A manifest may name a shape, a transformers config under configs/shapes/. The model is built on the meta
device from it (no memory, no download), its MoE layout discovered as a peer would, and the manifest's
expert-map budget, payload dtype and payload size are checked against it, and the bytes of one payload in each
codec (teft.codec) and its minutes over a 50 Mbit/s uplink are reported. A top-p budget selects the smallest
set whose share of a layer's routing reaches p; the top m experts always hold at least m/E of it, so at most
ceil(p * E) experts per layer are chosen: the payload bound below is exact for top-k and an upper bound for top-p.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import yaml

from swarm.errors import SwarmError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
UPLINK_MBIT_S = 50.0  # a home uplink: the table's minutes per payload


def _table_codecs():
    from teft.codec import CodecSpec

    return [CodecSpec("fp32"), CodecSpec("bf16"), CodecSpec("int8"), CodecSpec("sparse")]


def meta_model(shape: str):
    """The model of configs/shapes/<shape>.json on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = CONFIGS / "shapes" / f"{shape}.json"
    if not path.exists():
        raise SwarmError(f"shape {shape} not found at {path}: add the model's config.json there")
    raw = json.loads(path.read_text())
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def check(manifest_path: str | Path) -> dict:
    """The shape's layout and the manifest's budget, dtype and payload bytes per miner; SwarmError if they clash."""
    from teft.codec import payload_size
    from teft.model import discover_layout
    from teft.selection import METHODS
    from teft.state import DTYPES

    raw = yaml.safe_load(Path(manifest_path).read_text())
    shape = raw.get("shape")
    if not shape:
        raise SwarmError(f"{manifest_path} names no shape")
    model = meta_model(shape)
    layout = discover_layout(model)
    spec = (raw.get("expert_map") or {}).get("spec") or {}
    method, top_k, top_p = spec.get("method", "esft-token"), spec.get("top_k"), spec.get("top_p")
    experts = layout.num_experts
    if method not in METHODS:
        raise SwarmError(f"{manifest_path}: selection method {method!r} is not one of {', '.join(METHODS)}")
    if (top_k is None) == (top_p is None):
        raise SwarmError(f"{manifest_path}: give exactly one of top_k and top_p in expert_map.spec")
    if top_k is not None and not 1 <= top_k < experts:
        raise SwarmError(f"{manifest_path}: top_k {top_k} must be from 1 to {experts - 1} for {experts} experts")
    if top_p is not None and not 0 < top_p < 1:
        raise SwarmError(f"{manifest_path}: top_p {top_p} must be between 0 and 1")
    per_layer = top_k if top_k is not None else math.ceil(top_p * experts)
    dtype = raw.get("payload_dtype", "float32")
    model_dtype = str(model.config.dtype).removeprefix("torch.")
    if dtype != model_dtype:
        raise SwarmError(f"{manifest_path}: payload_dtype {dtype} differs from the model's {model_dtype}")
    itemsize = DTYPES[dtype].itemsize
    expert_numel = layout.expert_numel(layout.layers[0])
    if any(layout.expert_numel(moe) != expert_numel for moe in layout.layers):
        raise SwarmError(f"{shape}: MoE layers differ in expert size")
    selected = per_layer * len(layout.layers)
    codec_bytes = {spec.label(): payload_size(spec, selected * expert_numel) for spec in _table_codecs()}
    return {"manifest": str(manifest_path), "shape": shape, "model_type": layout.model_type,
            "moe_layers": len(layout.layers), "experts": experts, "top_k_routing": layout.top_k,
            "expert_params": expert_numel, "budget": {"top_k": top_k} if top_k is not None else {"top_p": top_p},
            "experts_per_layer_max": per_layer, "selected_max": selected,
            "selected_share": selected / (experts * len(layout.layers)), "payload_dtype": dtype,
            "payload_bytes_max": selected * expert_numel * itemsize, "codec_bytes_max": codec_bytes,
            "layout": layout}


def minutes(size: int, mbit_s: float = UPLINK_MBIT_S) -> float:
    """Minutes one payload takes over an uplink of `mbit_s` megabits per second."""
    return size * 8 / (mbit_s * 1e6) / 60


def _cell(size: int) -> str:
    """A payload's size and its time over the uplink, readable at every scale."""
    shown = f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
    taken = minutes(size)
    return f"{shown}, {taken:.1f} min" if taken >= 1 else f"{shown}, {taken * 60:.0f} s"


def main() -> int:
    labels = [spec.label() for spec in _table_codecs()]
    print("| manifest | MoE layers x experts (top-k) | params per expert | budget | experts chosen, at most | "
          "payload bytes per miner, at most | " + " | ".join(labels) + " |\n|---|---|---|---|---|---|"
          + "---|" * len(labels))
    for path in sorted(CONFIGS.glob("*.yaml")):
        if not (yaml.safe_load(path.read_text()) or {}).get("shape"):
            continue
        r = check(path)
        budget = ", ".join(f"{k} {v}" for k, v in r["budget"].items())
        codecs = " | ".join(_cell(r["codec_bytes_max"][label]) for label in labels)
        print(f"| {path.name} | {r['moe_layers']} x {r['experts']} (top-{r['top_k_routing']}) | "
              f"{r['expert_params']:,d} | {budget} | {r['selected_max']:,d} ({r['selected_share']:.1%}) | "
              f"{r['payload_bytes_max']:,d} ({r['payload_dtype']}, {r['payload_bytes_max'] / 2**30:.2f} GiB) | "
              f"{codecs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
