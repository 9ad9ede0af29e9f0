"""Pick the target experts per layer (ESFT or DES-MoE style) and keep the choice as a versioned JSON map.

The map records the method, budget, token count and the hashes of the model and data it came from, so
it can refuse to apply to another model instead of silently training the wrong experts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from teft.errors import TeftError
from teft.routing import RoutingProfile

MAP_VERSION = 1
METHODS = ("esft-token", "esft-gate", "des")


@dataclass
class ExpertMap:
    """Selected experts per MoE layer: {layer: [expert ids]}, plus where the choice came from."""

    layers: dict[int, list[int]]
    num_experts: int
    method: str = "manual"
    budget: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    model_hash: str = ""
    data_digest: str = ""
    general_digest: str = ""
    version: int = MAP_VERSION

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.layers.values())

    def to_json(self) -> str:
        body = asdict(self)
        body["layers"] = {str(k): sorted(v) for k, v in sorted(self.layers.items())}
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        from teft.state import atomic_write

        atomic_write(Path(path), self.to_json().encode())

    @classmethod
    def from_json(cls, text: str, source: str = "expert map") -> ExpertMap:
        try:
            body = json.loads(text)
            if body.get("version") != MAP_VERSION:
                raise TeftError(f"{source} has version {body.get('version')!r}; this teft reads version "
                                f"{MAP_VERSION}: re-run `teft select`")
            layers = {int(k): sorted(int(e) for e in v) for k, v in body["layers"].items()}
            fields = {k: body[k] for k in ("num_experts", "method", "budget", "tokens", "model_hash",
                                           "data_digest", "general_digest") if k in body}
            return cls(layers=layers, **fields)
        except TeftError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise TeftError(f"{source} is not a valid expert map ({type(err).__name__}: {err}); "
                            "write one with `python -m teft select`") from err

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExpertMap:
        path = Path(path)
        if not path.is_file():
            raise TeftError(f"expert map '{path}' does not exist; create it with `python -m teft select`")
        return cls.from_json(path.read_text(), source=f"expert map '{path}'")

    def check_model(self, layout, model_hash: str | None = None) -> None:
        """Refuse a map made for another model (other hash, layer or expert count)."""
        if model_hash and self.model_hash and model_hash != self.model_hash:
            raise TeftError(f"the expert map was made for model {self.model_hash[:12]}, not this one "
                            f"({model_hash[:12]}); re-run `teft select` on this model")
        if self.num_experts != layout.num_experts:
            raise TeftError(f"the expert map is for {self.num_experts} experts per layer, this model has "
                            f"{layout.num_experts}; re-run `teft select` on this model")
        moe_layers = {m.layer for m in layout.layers}
        if not set(self.layers) <= moe_layers:
            raise TeftError(f"the expert map names layers {sorted(set(self.layers) - moe_layers)} that are "
                            "not MoE layers of this model; re-run `teft select` on this model")
        for layer, experts in sorted(self.layers.items()):
            count = layout.layer(layer).num_experts
            bad = [e for e in experts if not 0 <= e < count]
            if bad:
                raise TeftError(f"the expert map selects experts {bad} in layer {layer}, but this model's experts "
                                f"are 0..{count - 1}; re-run `teft select` on this model")


def _budget_pick(scores: torch.Tensor, top_k: int | None, top_p: float | None) -> list[int]:
    """Indices of the chosen experts of one layer; ties go to the lower expert id."""
    order = sorted(range(len(scores)), key=lambda e: (-float(scores[e]), e))
    positive = [e for e in order if float(scores[e]) > 0]
    if top_k is not None:
        return sorted(positive[:top_k])
    total = float(scores.clamp_min(0).sum())
    chosen, mass = [], 0.0
    for e in positive:
        if mass >= top_p * total - 1e-12:
            break
        chosen.append(e)
        mass += float(scores[e])
    return sorted(chosen)


def select_experts(profile: RoutingProfile, method: str, top_k: int | None = None,
                   top_p: float | None = None, general: RoutingProfile | None = None) -> dict[int, list[int]]:
    """ESFT (token share or gate share) or DES (domain share minus general share), budget per layer."""
    if method not in METHODS:
        raise TeftError(f"unknown selection method '{method}'; use one of {', '.join(METHODS)}")
    if (top_k is None) == (top_p is None):
        raise TeftError("give exactly one budget: --top-k K (experts per layer) or --top-p P (share per layer)")
    if top_k is not None and top_k < 1:
        raise TeftError(f"--top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise TeftError(f"--top-p must be in (0, 1], got {top_p}")
    if method == "esft-gate":
        scores = profile.share("gate")
    else:
        scores = profile.share("token")
    if method == "des":
        if general is None:
            raise TeftError("method 'des' needs --general-data: it removes experts that dominate general text")
        scores = (scores - general.share("token")).clamp_min(0)
    return {layer: _budget_pick(scores[row], top_k, top_p) for row, layer in enumerate(profile.layers)}
