"""A miner's work in one cycle: train the selected experts from Phi_t on its own batches, emit Phi_i bytes.

Adversarial variants exist so the simulation and the tests can check that the protocol stops them;
an honest peer never sets one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from swarm.runtime import Runtime
from teft.data import iterate_batches
from teft.state import ExpertState, extract_state, load_state, to_bytes
from teft.train import train_experts

logger = logging.getLogger(__name__)

# kinds that change what a miner submits; `copycat`, `replay` and `late` change how it takes part
PAYLOAD_ADVERSARIES = ("free-rider", "noise", "poison", "nan", "oversize", "wrong-shape", "extra-keys")
PROTOCOL_ADVERSARIES = ("copycat", "replay", "late")
MINER_ADVERSARIES = PAYLOAD_ADVERSARIES + PROTOCOL_ADVERSARIES


@dataclass
class Submission:
    payload: bytes
    first_loss: float
    last_loss: float
    steps: int


def train_submission(rt: Runtime, base: ExpertState, miner_id: str, cycle: int,
                     should_stop: Callable[[], bool] | None = None, adversary: str | None = None) -> Submission:
    """H inner steps from `base` on this miner's batches for this cycle; the model is restored afterwards."""
    cfg = rt.inner
    cfg.seed = cycle
    batch_size = rt.manifest.inner.batch_size
    load_state(rt.model, rt.layout, base)
    try:
        if adversary == "free-rider":
            return Submission(to_bytes(base, rt.payload_dtype), float("nan"), float("nan"), 0)
        batches = iterate_batches(rt.train_blocks, batch_size, f"{miner_id}/{cycle}", cfg.steps)
        result = train_experts(rt.model, rt.layout, rt.expert_map, batches, cfg, should_stop=should_stop)
        trained = extract_state(rt.model, rt.layout, rt.expert_map, dtype=torch.float32)
    finally:
        load_state(rt.model, rt.layout, base)
    if adversary in PAYLOAD_ADVERSARIES:
        payload = corrupt(adversary, base, trained, rt.payload_dtype, cycle)
    else:
        payload = to_bytes(trained, rt.payload_dtype)
    return Submission(payload, result.losses[0], result.losses[-1], cfg.steps)


def corrupt(kind: str, base: ExpertState, trained: ExpertState, dtype: torch.dtype, cycle: int) -> bytes:
    """The bytes a misbehaving miner would send instead of its honest Phi_i."""
    g = torch.Generator().manual_seed(cycle + 7)
    if kind == "noise":
        bad = {k: v + 0.005 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    elif kind == "poison":  # the honest update, sign-flipped: as small as an honest one, but raises the loss
        bad = {k: base[k] - (trained[k] - base[k]) for k in base}
    elif kind == "nan":
        bad = {k: v.clone() for k, v in trained.items()}
        first = next(iter(bad))
        bad[first].view(-1)[0] = float("nan")
    elif kind == "oversize":
        return to_bytes(trained, dtype) + b"\0" * 4096
    elif kind == "wrong-shape":  # a transposed matrix: the same byte count, so only the shape check can tell
        bad = {k: v.clone() for k, v in trained.items()}
        first = next(k for k, v in bad.items() if v.dim() == 2 and v.shape[0] != v.shape[1])
        bad[first] = bad[first].t().contiguous()
    elif kind == "extra-keys":  # smuggle an unselected expert in place of a selected one, at the same size
        from teft.state import parse_key, state_key

        bad = {k: v.clone() for k, v in trained.items()}
        first = next(iter(bad))
        layer, expert, param = parse_key(first)
        taken = {parse_key(k)[1] for k in bad if parse_key(k)[0] == layer}
        other = next(e for e in range(10 ** (len(str(expert)) - 1), 10 ** len(str(expert))) if e not in taken)
        bad[state_key(layer, other, param)] = bad.pop(first)
    else:
        raise ValueError(f"unknown payload adversary {kind}")
    return to_bytes(bad, dtype)
