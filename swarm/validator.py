"""A validator's work in one cycle: the shared evaluation seed, checks, and Proof-of-Loss scores.

The validation subset comes from a seed that combines every committed validator's revealed seed, so it
is fixed only after miners committed: nobody can train on it in advance.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch

from swarm.consensus import Entry
from swarm.runtime import Runtime
from teft.data import subset
from teft.errors import TeftError
from teft.pol import score, state_loss
from teft.state import ExpertState, check_state, from_bytes

logger = logging.getLogger(__name__)


def combined_seed(revealed: dict[str, str]) -> bytes:
    """One seed from all valid reveals (validator id -> seed hex), independent of arrival order."""
    digest = hashlib.sha256(b"teft-eval-seed")
    for validator in sorted(revealed):
        digest.update(validator.encode() + b"\0" + bytes.fromhex(revealed[validator]) + b"\0")
    return digest.digest()


def validation_batches(rt: Runtime, seed: bytes, batch_size: int = 8) -> list[torch.Tensor]:
    n = int(rt.manifest.data.get("validation_blocks", 32))
    blocks = subset(rt.validation_blocks, seed, n)
    return [blocks[i:i + batch_size] for i in range(0, len(blocks), batch_size)]


@dataclass
class Verdict:
    miner: str
    payload_hash: str
    loss: float
    score: float
    reason: str | None = None  # why it scored zero without evaluation


def evaluate(rt: Runtime, base: ExpertState, base_loss: float, miner: str, payload_hash: str,
             data: bytes | None, batches: list[torch.Tensor], fetch_error: str | None = None) -> Verdict:
    """Check a submission and score it by Proof-of-Loss; anything malformed scores zero with a reason."""
    if data is None:
        return Verdict(miner, payload_hash, float("inf"), 0.0, fetch_error or "payload not received")
    try:
        state = from_bytes(data)
    except TeftError as err:
        return Verdict(miner, payload_hash, float("inf"), 0.0, str(err))
    reason = check_state(state, rt.layout, rt.expert_map, dtype=rt.payload_dtype,
                         max_norm=rt.manifest.max_delta_norm, reference=base)
    if reason:
        return Verdict(miner, payload_hash, float("inf"), 0.0, reason)
    loss = state_loss(rt.model, rt.layout, state, batches)
    return Verdict(miner, payload_hash, loss, score(base_loss, loss))


def to_entries(verdicts: list[Verdict]) -> list[Entry]:
    """Ranking entries, best first, losses made finite for the record schema."""
    entries = [Entry(v.miner, v.payload_hash, v.loss if v.loss < 1e30 else 1e30, v.score) for v in verdicts]
    return sorted(entries, key=lambda e: (-e.score, e.miner, e.payload_hash))
