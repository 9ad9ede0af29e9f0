"""Routing statistics: how often, and how strongly, each expert of each MoE layer is used on some data.

Hooks on the routers read the experts a model actually picks (its own top-k, bias correction and group
limits included), so the statistics match what the model computes rather than a re-implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from teft.model import MoELayout, decoder_and_head, get_module


@dataclass
class RoutingProfile:
    """Per layer and expert: top-k hit counts and routing-weight mass over `tokens` tokens."""

    layers: list[int]
    counts: torch.Tensor  # [L, E] float64, number of tokens that routed to the expert
    gate: torch.Tensor  # [L, E] float64, sum of normalised routing weights the expert received
    tokens: int

    def share(self, kind: str = "token") -> torch.Tensor:
        """Scores normalised within each layer (each row sums to 1)."""
        scores = self.counts if kind == "token" else self.gate
        return scores / scores.sum(dim=1, keepdim=True).clamp_min(1e-12)


def _route_from_output(output, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [T, k], weights [T, k]) from a router's output, whatever its return convention."""
    if isinstance(output, tuple) and len(output) >= 3:
        logits, weights, indices = output[0], output[1], output[2]
        if weights.shape != indices.shape:  # dense scores [T, E]: gather the chosen ones
            weights = weights.reshape(-1, weights.shape[-1]).gather(1, indices.reshape(-1, indices.shape[-1]))
        return indices.reshape(-1, indices.shape[-1]), weights.reshape(-1, indices.shape[-1]).float()
    logits = output[0] if isinstance(output, tuple) else output  # a plain linear router
    probs = torch.softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1)
    weights, indices = probs.topk(top_k, dim=-1)
    return indices, weights


class RoutingRecorder:
    """Context manager that records which experts every MoE layer picks during forward passes."""

    def __init__(self, model: nn.Module, layout: MoELayout, keep_tokens: bool = False):
        self.model, self.layout, self.keep_tokens = model, layout, keep_tokens
        n, e = len(layout.layers), layout.num_experts
        self.counts = torch.zeros(n, e, dtype=torch.float64)
        self.gate = torch.zeros(n, e, dtype=torch.float64)
        self.tokens = 0
        self.per_token: list[list[torch.Tensor]] = [[] for _ in layout.layers]  # indices per batch
        self._handles = []

    def _hook(self, row: int):
        def hook(_module, _inputs, output):
            indices, weights = _route_from_output(output, self.layout.top_k)
            indices = indices.detach()
            if self.counts.device != indices.device:  # count where the model runs: no sync per layer
                self.counts, self.gate = self.counts.to(indices.device), self.gate.to(indices.device)
            weights = weights.detach().double()
            weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
            valid = indices < self.layout.num_experts  # some models pad with an out-of-range index
            flat = indices[valid]
            self.counts[row].index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
            self.gate[row].index_add_(0, flat, weights[valid])
            if self.keep_tokens:
                self.per_token[row].append(indices.cpu())
        return hook

    def __enter__(self) -> RoutingRecorder:
        for row, moe in enumerate(self.layout.layers):
            router = get_module(self.model, moe.router)
            self._handles.append(router.register_forward_hook(self._hook(row)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def profile(self) -> RoutingProfile:
        return RoutingProfile([m.layer for m in self.layout.layers], self.counts.cpu().clone(),
                              self.gate.cpu().clone(), self.tokens)


def route_forward(model: nn.Module, input_ids: torch.Tensor) -> None:
    """The forward routing needs: the decoder alone (no logits), in bf16 autocast on CUDA."""
    parts = decoder_and_head(model)
    device = input_ids.device
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        (parts[0] if parts else model)(input_ids=input_ids, use_cache=False)


@torch.no_grad()
def routing_profile(model: nn.Module, layout: MoELayout, blocks: torch.Tensor, batch_size: int = 8,
                    progress: bool = False, desc: str = "routing") -> RoutingProfile:
    """Run token blocks [N, T] through the model and count expert use per layer."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with RoutingRecorder(model, layout) as rec:
        for start in tqdm(range(0, len(blocks), batch_size), desc=desc, disable=not progress, unit="batch"):
            batch = blocks[start:start + batch_size].to(device)
            route_forward(model, batch)
            rec.tokens += batch.numel()
    model.train(was_training)
    return rec.profile()
