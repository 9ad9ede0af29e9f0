"""A manifest checked against its model's real shape, without the weights: `python -m swarm.protocol.shapes`.

A manifest may name a shape, a transformers config under configs/shapes/. The model is built on the meta
device from it (no memory, no download), its MoE layout discovered as a peer would, and the manifest's
expert-map budget, payload dtype and payload size are checked against it, and the bytes of one payload in each
codec (teft.codec) and its minutes over a 50 Mbit/s uplink are reported. A top-p budget selects the smallest
set whose share of a layer's routing reaches p; the top m experts always hold at least m/E of it, so at most
ceil(p * E) experts per layer are chosen: the payload bytes printed are exact for top-k and an upper bound for
top-p. With no MANIFEST, every configs/*.yaml that names a shape is checked; the table goes to stdout.
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

    try:
        raw = yaml.safe_load(Path(manifest_path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SwarmError(f"cannot read manifest {manifest_path}: {err}") from None
    shape = raw.get("shape") if isinstance(raw, dict) else None
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
            "layout": layout,
            "model_dtype": model_dtype}


def minutes(size: int, mbit_s: float = UPLINK_MBIT_S) -> float:
    """Minutes one payload takes over an uplink of `mbit_s` megabits per second."""
    return size * 8 / (mbit_s * 1e6) / 60


def _cell(size: int) -> str:
    """A payload's size and its time over the uplink, readable at every scale."""
    shown = f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
    taken = minutes(size)
    return f"{shown}, {taken:.1f} min" if taken >= 1 else f"{shown}, {taken * 60:.0f} s"


GPU_CLASSES_GB = (24, 48, 80, 141)  # the GPU memory classes a miner is sized against, in 10^9 bytes


def miner_bytes(r: dict, background: str, optimizer: str = "adamw") -> dict:
    """A miner's resident bytes for a checked manifest (`check`'s result) and background, before activations.

    frozen: the hub, routers, shared and selected experts in the checkpoint's dtype, plus the unselected experts in
    the background's form (teft.light: 4-bit NF4 codes with an fp32 absmax per 64 values, or int8 with an fp32
    scale per output row); masters, gradients and AdamW moments are fp32 for the selected experts only (adamw8bit:
    two uint8 moments with an fp32 absmax per 256 values each). With a top-p budget the selection is its upper
    bound (experts_per_layer_max in every layer).
    """
    import torch

    from teft.light import code_sizes

    layout = r["layout"]
    itemsize = getattr(torch, r["model_dtype"]).itemsize
    counts = layout.param_counts
    selected, experts = r["selected_max"], r["experts"] * r["moe_layers"]
    trained = selected * r["expert_params"]
    full_precision = counts["total"] - counts["routed_experts"] + trained
    frozen = full_precision * itemsize
    if background == "bf16":
        frozen += (experts - selected) * r["expert_params"] * itemsize
    else:
        per_expert = sum(sum(code_sizes(shape, background)) for _, shape in layout.layers[0].params)
        frozen += (experts - selected) * per_expert
    out = {"background": background, "frozen": frozen, "masters": 4 * trained, "gradients": 4 * trained,
           "moments": 8 * trained if optimizer == "adamw" else 2 * (trained + 4 * -(-trained // 256))}
    out["total"] = sum(v for k, v in out.items() if k != "background")
    out["fits_gb"] = [gb for gb in GPU_CLASSES_GB if out["total"] <= gb * 10**9]
    return out


def memory_table() -> str:
    """The README's table of full and light miner bytes for every real manifest."""
    lines = ["| manifest | background | frozen weights | fp32 masters | gradients | AdamW moments | total | "
             "fits (GB, before activations) | total with adamw8bit (fits) |", "|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(CONFIGS.glob("*.yaml")):
        if not (yaml.safe_load(path.read_text()) or {}).get("shape"):
            continue
        r = check(path)
        for background in ("bf16", "int8", "4bit"):
            m = miner_bytes(r, background)
            cells = " | ".join(f"{m[k] / 1e9:.1f} GB" for k in ("frozen", "masters", "gradients", "moments", "total"))
            fits = ", ".join(str(gb) for gb in m["fits_gb"]) or "none"
            small = miner_bytes(r, background, "adamw8bit")
            fits8 = ", ".join(str(gb) for gb in small["fits_gb"]) or "none"
            lines.append(f"| {path.name} | {background} | {cells} | {fits} | {small['total'] / 1e9:.1f} GB ({fits8}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the payload table of the manifests given (default: every configs/*.yaml that names a shape)."""
    from swarm import cli

    parser = cli.parser("python -m swarm.protocol.shapes", __doc__)
    parser.add_argument("manifests", nargs="*", metavar="MANIFEST",
                        help="manifest YAML files naming a shape (default: every configs/*.yaml that names one)")
    args = parser.parse_args(argv)
    try:
        paths = [Path(m) for m in args.manifests] or [
            p for p in sorted(CONFIGS.glob("*.yaml")) if (yaml.safe_load(p.read_text()) or {}).get("shape")]
        rows = []
        for path in paths:
            if not path.is_file():
                raise SwarmError(f"manifest {path} not found: check the path")
            rows.append((path, check(path)))
    except SwarmError as err:
        return cli.fail(str(err))
    labels = [spec.label() for spec in _table_codecs()]
    print("| manifest | MoE layers x experts (top-k) | params per expert | budget | experts chosen, at most | "
          "payload bytes per miner, at most | " + " | ".join(labels) + " |\n|---|---|---|---|---|---|"
          + "---|" * len(labels))
    for path, r in rows:
        budget = ", ".join(f"{k} {v}" for k, v in r["budget"].items())
        codecs = " | ".join(_cell(r["codec_bytes_max"][label]) for label in labels)
        print(f"| {path.name} | {r['moe_layers']} x {r['experts']} (top-{r['top_k_routing']}) | "
              f"{r['expert_params']:,d} | {budget} | {r['selected_max']:,d} ({r['selected_share']:.1%}) | "
              f"{r['payload_bytes_max']:,d} ({r['payload_dtype']}, {r['payload_bytes_max'] / 2**30:.2f} GiB) | "
              f"{codecs} |")
    print("\nA miner's resident bytes (GB = 10^9 bytes; top-p budgets at their upper bound):\n")
    print(memory_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
