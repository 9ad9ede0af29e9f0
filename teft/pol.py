"""Proof-of-Loss: a submission is worth what it lowers the loss on data its author could not predict.

Candidates are evaluated by swapping their slices into one loaded model and swapping the original back,
so scoring N submissions costs N forward passes over the subset, never N model copies.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from teft.model import MoELayout
from teft.state import extract_keys, load_state
from teft.train import lm_loss, lm_row_losses


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Iterable[torch.Tensor]) -> float:
    """Token-weighted mean next-token loss over batches of equal-length blocks."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        tokens = batch.shape[0] * (batch.shape[1] - 1)
        total += float(lm_loss(model, batch)) * tokens
        count += tokens
    model.train(was_training)
    return total / max(count, 1)


def state_loss(model: nn.Module, layout: MoELayout, state: dict[str, torch.Tensor],
               batches: list[torch.Tensor]) -> float:
    """Loss with `state` swapped in; the model's own slices are restored afterwards, even on error."""
    if not all(torch.isfinite(t).all() for t in state.values()):
        return math.inf
    with swapped_in(model, layout, state):
        return mean_loss(model, batches)


@contextlib.contextmanager
def swapped_in(model: nn.Module, layout: MoELayout, state: dict[str, torch.Tensor]):
    """The model with `state`'s slices loaded; its own slices are put back afterwards, even on error."""
    saved = extract_keys(model, layout, state, dtype=next(model.parameters()).dtype)
    try:
        load_state(model, layout, state)
        yield model
    finally:
        load_state(model, layout, saved)


@torch.no_grad()
def block_losses(model: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Every block's mean next-token loss, in order (float64 on the CPU); their mean is `mean_loss` of the
    same equal-length blocks."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        out = [lm_row_losses(model, batch.to(device)).double().cpu() for batch in batches]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def state_block_losses(model: nn.Module, layout: MoELayout, state: dict[str, torch.Tensor],
                       batches: list[torch.Tensor]) -> torch.Tensor:
    """`block_losses` with `state` swapped in (all inf if the state is not finite); the model is restored."""
    if not all(torch.isfinite(t).all() for t in state.values()):
        return torch.full((sum(len(b) for b in batches),), math.inf, dtype=torch.float64)
    with swapped_in(model, layout, state):
        return block_losses(model, batches)


def score(base_loss: float, candidate_loss: float) -> float:
    """s = max(0, L(base) - L(candidate)); anything non-finite scores zero."""
    if not (math.isfinite(base_loss) and math.isfinite(candidate_loss)):
        return 0.0
    return max(0.0, base_loss - candidate_loss)


@dataclass(frozen=True)
class Scored:
    """One ranked submission."""

    miner: str
    payload_hash: str
    loss: float
    score: float


def rank(entries: Iterable[Scored]) -> list[Scored]:
    """Best first; ties broken by miner id then payload hash, so every peer orders them the same."""
    return sorted(entries, key=lambda s: (-s.score, s.miner, s.payload_hash))
