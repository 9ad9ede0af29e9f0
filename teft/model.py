"""Load any transformers MoE from a local directory and find its experts by looking at the module tree.

TEFT needs to know, per MoE layer, which module routes tokens and which tensors hold the routed experts.
Rather than keep a table per architecture, the layout is discovered: a block whose child named
`*experts` is either one module holding fused 3-D tensors whose first dimension is the expert count
(transformers 5) or a ModuleList of identical expert modules (older / remote-code models), and whose
sibling is a router with a weight of shape [num_experts, hidden]. Everything else (attention, norms,
embeddings, shared experts, routers) is the frozen hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from teft.errors import TeftError

ASSETS = Path(__file__).resolve().parent / "assets"
BUILTIN_MODELS = {"tiny": ASSETS / "tiny-moe"}

_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOP_K_KEYS = ("num_experts_per_tok", "moe_top_k", "top_k", "num_experts_per_token")


@dataclass(frozen=True)
class MoELayer:
    """One MoE block: where its router and routed experts live, and the per-expert tensor shapes."""

    layer: int  # decoder layer number, the key of an expert map
    block: str  # module path of the MoE block
    router: str  # module path of the router
    experts: str  # module path of the routed experts
    num_experts: int
    fused: bool  # True: 3-D tensors [E, ...]; False: ModuleList of expert modules
    params: tuple[tuple[str, tuple[int, ...]], ...]  # (name, per-expert shape), sorted by name
    shared: tuple[str, ...] = ()  # module paths of shared experts (hub, frozen)


@dataclass
class MoELayout:
    """The MoE structure of a model: what an expert map indexes into."""

    model_type: str
    layers: list[MoELayer]
    top_k: int
    num_experts: int
    param_counts: dict[str, int] = field(default_factory=dict)

    def layer(self, number: int) -> MoELayer:
        for moe in self.layers:
            if moe.layer == number:
                return moe
        raise TeftError(f"layer {number} is not an MoE layer of this {self.model_type} model; "
                        f"MoE layers are {[m.layer for m in self.layers]}")

    def expert_numel(self, moe: MoELayer) -> int:
        """Parameters in one routed expert of a layer."""
        total = 0
        for _, shape in moe.params:
            n = 1
            for s in shape:
                n *= s
            total += n
        return total


def resolve_model_path(spec: str | os.PathLike) -> Path:
    """Turn `tiny` or a local directory into a checkpoint directory, or say what is wrong."""
    spec = str(spec)
    if spec in BUILTIN_MODELS:
        path = BUILTIN_MODELS[spec]
        if not (path / "config.json").exists():
            raise TeftError(f"the embedded model '{spec}' is not in this checkout ({path}); "
                            "rebuild it with `python scripts/pretrain_tiny.py` or pass --model DIR")
        return path
    path = Path(spec).expanduser()
    if not path.exists():
        raise TeftError(f"model path '{spec}' does not exist; pass a local transformers checkpoint "
                        f"directory or one of: {', '.join(BUILTIN_MODELS)}")
    if not (path / "config.json").exists():
        raise TeftError(f"'{spec}' has no config.json, so it is not a transformers checkpoint; "
                        "pass the directory that save_pretrained wrote")
    return path


DTYPE_CHOICES = ("auto", "bfloat16", "float32")
_NO_PLAIN_HEAD = ("logits_scaling", "logit_scale", "final_logit_softcapping", "output_multiplier_scale")


def parse_dtype(name: str | torch.dtype) -> str | torch.dtype:
    """'auto' (the checkpoint's own dtype), a dtype name, or a torch dtype -> what load_model takes."""
    if isinstance(name, torch.dtype) or name == "auto":
        return name
    dtype = getattr(torch, str(name), None)
    if str(name) not in DTYPE_CHOICES or not isinstance(dtype, torch.dtype):
        raise TeftError(f"unknown dtype '{name}'; use one of {', '.join(DTYPE_CHOICES)}")
    return dtype


def checkpoint_dtype(path: Path) -> torch.dtype:
    """The floating dtype a checkpoint's config declares (float32 when it declares none)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise TeftError(f"cannot read {path / 'config.json'}: {err}") from err
    for cfg in (config, config.get("text_config") or {}):
        name = cfg.get("dtype") or cfg.get("torch_dtype")
        dtype = getattr(torch, str(name), None) if name else None
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
            return dtype
    return torch.float32


def load_model(spec: str | os.PathLike, dtype: str | torch.dtype = "auto", device: str = "cpu"):
    """Load a causal-LM MoE from local files only (never the hub) and return (model, tokenizer or None).

    dtype "auto" keeps the checkpoint's own dtype (bf16 for real MoEs, fp32 for the embedded tiny model), so
    the frozen model is never upcast; weights go straight to `device`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(spec)
    dtype = parse_dtype(dtype)
    if dtype == "auto":
        dtype = checkpoint_dtype(path)
    kwargs = {"dtype": dtype, "local_files_only": True}
    if str(device) != "cpu":
        kwargs["device_map"] = str(device)
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except ValueError as err:
            if "Unrecognized configuration class" not in str(err):
                raise
            # vision-language MoEs (Qwen3-VL-MoE): TEFT trains the text tower's experts
            from transformers import AutoModelForImageTextToText

            model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TeftError(f"could not load a causal LM from '{path}': {first}") from err
    model.to(device)
    model.eval()
    tokenizer = None
    if any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(decoder, lm_head) when the logits are exactly lm_head(decoder's last hidden state), else None.

    Callers that need no logits (routing) or only a loss (chunked over the vocabulary) run the decoder alone.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = getattr(model, getattr(model, "base_model_prefix", "") or "", None)
    if not isinstance(head, nn.Linear) or not isinstance(decoder, nn.Module) or decoder is model:
        return None
    if type(decoder).forward is nn.Module.forward:
        return None
    configs = [c for c in (getattr(model, "config", None), getattr(model.config, "text_config", None)) if c is not None]
    if any(getattr(c, key, None) not in (None, 1, 1.0) for c in configs for key in _NO_PLAIN_HEAD):
        return None  # the model scales or caps its logits: let it compute them itself
    return decoder, head


def model_hash(spec: str | os.PathLike) -> str:
    """sha256 over a checkpoint's config and weight files, so an expert map or state names its model."""
    path = resolve_model_path(spec)
    digest = hashlib.sha256()
    names = sorted(p.name for p in path.iterdir()
                   if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(path / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _config_value(config, keys) -> int | None:
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        for key in keys:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def _layer_number(path: str) -> int:
    numbers = re.findall(r"\.(\d+)\.", f".{path}.")
    if not numbers:
        raise TeftError(f"cannot tell the layer number of MoE block '{path}'")
    return int(numbers[-1])


def _find_router(block: nn.Module, block_path: str, num_experts: int) -> str | None:
    for name, child in block.named_children():
        if "expert" in name:
            continue
        weight = getattr(child, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[0] == num_experts:
            return f"{block_path}.{name}"
    return None


def discover_layout(model: nn.Module) -> MoELayout:
    """Find every MoE block of a loaded model; raise a clear error for a dense model."""
    config = model.config
    model_type = getattr(config, "model_type", type(model).__name__)
    top_k = _config_value(config, _TOP_K_KEYS)
    layers: list[MoELayer] = []
    for block_path, block in model.named_modules():
        experts_name = next((n for n, _ in block.named_children() if n == "experts"), None)
        if experts_name is None:
            continue
        experts = getattr(block, experts_name)
        experts_path = f"{block_path}.{experts_name}" if block_path else experts_name
        if isinstance(experts, nn.ModuleList):
            if len(experts) < 2:
                continue
            num_experts = len(experts)
            fused = False
            params = tuple(sorted((n, tuple(p.shape)) for n, p in experts[0].named_parameters()))
        else:
            direct = list(experts.named_parameters(recurse=False))
            if not direct:
                continue
            light = getattr(experts, "_teft_light", None)  # teft.light: only the selected rows are held
            num_experts = light.num_experts if light is not None else direct[0][1].shape[0]
            rows = len(light.ids) if light is not None else num_experts
            if any(p.dim() < 2 or p.shape[0] != rows for _, p in direct):
                continue
            fused = True
            params = tuple(sorted((n, tuple(p.shape[1:])) for n, p in direct))
        router = _find_router(block, block_path, num_experts)
        if router is None:
            continue
        shared = tuple(f"{block_path}.{n}" for n, _ in block.named_children() if "shared" in n)
        layers.append(MoELayer(_layer_number(block_path), block_path, router, experts_path,
                               num_experts, fused, params, shared))
    if not layers:
        raise TeftError(f"no MoE layers found in this {model_type} model: TEFT needs a Mixture-of-Experts "
                        "model whose blocks have routed `experts` and a router")
    layers.sort(key=lambda m: m.layer)
    num_experts = layers[0].num_experts
    if top_k is None:
        raise TeftError(f"cannot find how many experts a token uses in the {model_type} config "
                        f"(looked for {', '.join(_TOP_K_KEYS)})")
    layout = MoELayout(model_type, layers, top_k, num_experts)
    layout.param_counts = count_parameters(model, layout)
    return layout


def count_parameters(model: nn.Module, layout: MoELayout) -> dict[str, int]:
    """Split parameters into routed experts, routers, shared experts and the rest of the hub."""
    expert = sum(m.num_experts * layout.expert_numel(m) for m in layout.layers)
    held = sum(p.numel() for m in layout.layers for p in get_module(model, m.experts).parameters())
    router = sum(p.numel() for m in layout.layers for p in get_module(model, m.router).parameters())
    shared = sum(p.numel() for m in layout.layers for s in m.shared for p in get_module(model, s).parameters())
    total = sum(p.numel() for p in model.parameters()) - held + expert  # a light model holds fewer expert rows
    return {"total": total, "routed_experts": expert, "routers": router, "shared_experts": shared,
            "hub": total - expert - router - shared}


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def expert_tensor(model: nn.Module, moe: MoELayer, expert: int, param: str) -> torch.Tensor:
    """A view of one expert's tensor, whether the experts are fused or separate modules."""
    experts = get_module(model, moe.experts)
    light = getattr(experts, "_teft_light", None)  # teft.light: a low-bit background holds the selected rows only
    if light is not None:
        if expert not in light.ids:
            raise TeftError(f"expert {expert} of layer {moe.layer} is in this light model's {light.background} "
                            "background, not held at full precision: only the expert map's experts can be read")
        return getattr(experts, param)[light.ids.index(expert)]
    if moe.fused:
        return getattr(experts, param)[expert]
    return experts[expert].get_parameter(param)


def describe(layout: MoELayout) -> str:
    """Human-readable summary for `teft inspect`."""
    counts = layout.param_counts
    first = layout.layers[0]
    lines = [
        f"model type      {layout.model_type}",
        f"MoE layers      {len(layout.layers)} ({', '.join(str(m.layer) for m in layout.layers)})",
        f"routed experts  {layout.num_experts} per layer, top-{layout.top_k} per token, "
        f"{'fused 3-D tensors' if first.fused else 'one module per expert'}",
        f"expert tensors  {', '.join(f'{n}{list(s)}' for n, s in first.params)}",
        f"shared experts  {', '.join(s.rsplit('.', 1)[-1] for s in first.shared) or 'none'}",
        f"router          {first.router.rsplit('.', 1)[-1]}",
    ]
    for key in ("total", "routed_experts", "shared_experts", "routers", "hub"):
        value = counts.get(key, 0)
        share = 100.0 * value / max(counts.get("total", 1), 1)
        lines.append(f"params {key:<15} {value:>14,d}  ({share:5.1f}%)")
    per_expert = layout.expert_numel(first)
    lines.append(f"params per expert      {per_expert:>14,d}")
    return "\n".join(lines)


def layout_dict(layout: MoELayout) -> dict:
    """The layout as plain JSON-ready values, for `teft inspect --json`."""
    return {
        "model_type": layout.model_type, "top_k": layout.top_k, "num_experts": layout.num_experts,
        "layers": [m.layer for m in layout.layers], "fused": layout.layers[0].fused,
        "params": {n: list(s) for n, s in layout.layers[0].params}, "param_counts": layout.param_counts,
    }


def layout_json(layout: MoELayout) -> str:
    return json.dumps(layout_dict(layout), indent=2)
