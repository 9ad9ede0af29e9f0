"""The outer step: pseudo-gradients, their merge, and a DiLoCo-style Nesterov update.

Everything here runs in fp32 on the CPU over keys in canonical order, with plain element-wise ops and
sums in a fixed order, so two processes given the same inputs write the same bytes: that is what lets
honest peers agree on the next state by comparing hashes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from teft.errors import TeftError
from teft.state import ExpertState, canonical


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


def outer_step(base: ExpertState, submissions: list[ExpertState], optimizer: NesterovOuter,
               weights: list[float] | None = None) -> ExpertState:
    """Merge the chosen submissions' pseudo-gradients and apply one outer step."""
    deltas = [pseudo_gradient(base, s) for s in submissions]
    return optimizer.step(base, merge(deltas, weights))


CHECKPOINT_FORMAT = "teft-outer-checkpoint"


def checkpoint_bytes(state: ExpertState, momentum: ExpertState | None) -> bytes:
    """The one outer-checkpoint format: `state.*` and `momentum.*` tensors in fp32, canonical bytes.

    Phi and the Nesterov momentum travel and persist together, so a peer that fetches the checkpoint by
    hash continues exactly like one that computed it.
    """
    from safetensors.torch import save

    tensors = {f"state.{k}": v for k, v in state.items()} | {f"momentum.{k}": v for k, v in (momentum or {}).items()}
    return save({k: tensors[k].detach().to(torch.float32).contiguous() for k in sorted(tensors)},
                metadata={"format": CHECKPOINT_FORMAT})


def from_checkpoint(data: bytes) -> tuple[ExpertState, ExpertState]:
    """(state, momentum) of an outer checkpoint, in canonical key order; TeftError if it is not one."""
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise TeftError(f"not a valid outer checkpoint: {err}") from None
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    momentum = {k[len("momentum."):]: v for k, v in tensors.items() if k.startswith("momentum.")}
    if len(state) + len(momentum) != len(tensors) or not state:
        raise TeftError("not a valid outer checkpoint: tensors outside state.* and momentum.*")
    return canonical(state), canonical(momentum)
