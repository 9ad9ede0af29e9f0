"""The outer step: pseudo-gradients, their merge, and a DiLoCo-style Nesterov update.

Everything here runs in fp32 on the CPU over keys in canonical order, with plain element-wise ops and
sums in a fixed order, so two processes given the same inputs write the same bytes: that is what lets
honest peers agree on the next state by comparing hashes.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import torch

from teft.errors import TeftError
from teft.state import ExpertState, atomic_write, canonical


def pseudo_gradient(base: ExpertState, new: ExpertState) -> ExpertState:
    """Delta_i = Phi_t - Phi_i: the direction a miner's inner loop moved, as a gradient would point."""
    if set(base) != set(new):
        raise TeftError("pseudo-gradient of states with different keys; both must follow the same expert map")
    base, new = canonical(base), canonical(new)
    return OrderedDict((k, base[k] - new[k]) for k in base)


def merge(deltas: list[ExpertState], weights: list[float] | None = None) -> ExpertState:
    """Average pseudo-gradients, uniformly or by score; callers pass them in a fixed (ranked) order."""
    if not deltas:
        raise TeftError("nothing to merge: no submission was chosen")
    if weights is None:
        weights = [1.0] * len(deltas)
    if len(weights) != len(deltas) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise TeftError("merge weights must be non-negative, one per delta, with a positive sum")
    total = float(sum(weights))
    merged = OrderedDict()
    for key in canonical(deltas[0]):
        acc = torch.zeros_like(deltas[0][key], dtype=torch.float32)
        for delta, w in zip(deltas, weights, strict=True):
            acc = acc + delta[key].float() * torch.tensor(w / total, dtype=torch.float32)
        merged[key] = acc
    return merged


@dataclass
class OuterConfig:
    """The manifest's `outer` section."""

    lr: float = 0.7
    momentum: float = 0.9
    nesterov: bool = True


class NesterovOuter:
    """SGD with Nesterov momentum on pseudo-gradients; its momentum buffer is part of resumable state."""

    def __init__(self, cfg: OuterConfig | None = None, momentum: ExpertState | None = None):
        self.cfg = cfg or OuterConfig()
        self.buffer: ExpertState = canonical(momentum) if momentum else OrderedDict()

    def step(self, base: ExpertState, delta: ExpertState) -> ExpertState:
        """Phi_{t+1} = Phi_t - lr * (delta + mu * buf) with buf = mu * buf + delta (Nesterov)."""
        lr = torch.tensor(self.cfg.lr, dtype=torch.float32)
        mu = torch.tensor(self.cfg.momentum, dtype=torch.float32)
        base, delta = canonical(base), canonical(delta)
        new_buffer, new_state = OrderedDict(), OrderedDict()
        for key in base:
            buf = self.buffer.get(key)
            buf = delta[key].clone() if buf is None else mu * buf + delta[key]
            update = delta[key] + mu * buf if self.cfg.nesterov else buf
            new_buffer[key] = buf
            new_state[key] = base[key] - lr * update
        self.buffer = new_buffer
        return new_state

    def save(self, path: str | os.PathLike) -> None:
        from pathlib import Path

        from teft.state import to_bytes

        atomic_write(Path(path), to_bytes(self.buffer) if self.buffer else b"")

    @classmethod
    def load(cls, path: str | os.PathLike, cfg: OuterConfig | None = None) -> NesterovOuter:
        from teft.state import from_bytes

        with open(path, "rb") as fh:
            data = fh.read()
        return cls(cfg, from_bytes(data) if data else None)


def outer_step(base: ExpertState, submissions: list[ExpertState], optimizer: NesterovOuter,
               weights: list[float] | None = None) -> ExpertState:
    """Merge the chosen submissions' pseudo-gradients and apply one outer step."""
    deltas = [pseudo_gradient(base, s) for s in submissions]
    return optimizer.step(base, merge(deltas, weights))
