"""Reduce: combine validators' rankings by one rule and apply the outer step, identically on every peer.

The rule: for each (miner, payload hash), the median over the allowlisted validators' scores, where a
validator that did not score that exact pair counts as zero; at least `quorum` rankings are needed or
nothing is merged. The top-k pairs with a positive median of at least a fraction of the best median
are merged, one per miner and per payload, in a fixed order. A minority of validators cannot move a
median past the honest majority, so a liar can neither push a bad submission in nor a good one out.

The agreed object is the outer checkpoint: Phi_{c+1} and the Nesterov momentum in one canonical
safetensors file, so a late joiner that fetches it by hash continues exactly like everyone else.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from teft.outer import NesterovOuter, OuterConfig, outer_step
from teft.state import ExpertState, canonical


@dataclass(frozen=True)
class Entry:
    """One line of a validator's ranking."""

    miner: str
    payload_hash: str
    loss: float
    score: float


@dataclass
class Decision:
    """What the rankings decided for one cycle."""

    quorum_met: bool
    validators: list[str]
    merged: list[tuple[str, str, float]]  # (miner, payload hash, median score), in merge order
    medians: dict[tuple[str, str], float] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # validator -> miner -> score


def combine(rankings: dict[str, list[Entry]], allowlist: set[str] | list[str], quorum: int,
            top_k: int, min_relative: float = 0.0) -> Decision:
    """The merge decision from rankings keyed by validator; non-allowlisted validators are ignored.

    A pair is merged only if its median is positive and at least `min_relative` of the best median:
    a perturbation that lowers the loss by luck (noise) scores a sliver of what training does.
    """
    allowed = set(allowlist)
    valid = {v: entries for v, entries in sorted(rankings.items()) if v in allowed}
    scores = {v: {e.miner: e.score for e in entries} for v, entries in valid.items()}
    if len(valid) < quorum:
        return Decision(False, sorted(valid), [], {}, scores)
    pairs = sorted({(e.miner, e.payload_hash) for entries in valid.values() for e in entries})
    medians = {}
    for miner, digest in pairs:
        per_validator = []
        for entries in valid.values():
            match = [e.score for e in entries if e.miner == miner and e.payload_hash == digest]
            value = match[0] if match else 0.0
            per_validator.append(value if value == value and value > 0 else 0.0)  # NaN and negatives count 0
        medians[(miner, digest)] = float(statistics.median(per_validator))
    order = sorted(medians, key=lambda p: (-medians[p], p[0], p[1]))
    floor = min_relative * medians[order[0]] if order else 0.0
    merged, miners, digests = [], set(), set()
    for miner, digest in order:
        if medians[(miner, digest)] <= max(floor, 0.0) or len(merged) >= top_k:
            break
        if miner in miners or digest in digests:  # one submission per miner; identical bytes count once
            continue
        merged.append((miner, digest, medians[(miner, digest)]))
        miners.add(miner)
        digests.add(digest)
    return Decision(True, sorted(valid), merged, medians, scores)


def decide(ranking_records: dict, manifest) -> Decision:
    """`combine` on a cycle's ranking records (owner public key -> record) with the run's own allowlist,
    quorum, top-k and merge floor: the one call every peer and `swarm.status` make, so they cannot differ."""
    from swarm.identity import normalize_public_key

    rankings = {normalize_public_key(owner): [Entry(*e) for e in rec.entries] for owner, rec in ranking_records.items()}
    return combine(rankings, set(manifest.validators), manifest.quorum,
                   manifest.outer.top_k, manifest.outer.min_relative_score)


def bundle(state: ExpertState, momentum: ExpertState | None) -> bytes:
    """Canonical bytes of the outer checkpoint: `state.*` and `momentum.*` tensors in fp32."""
    from safetensors.torch import save

    tensors = {f"state.{k}": v for k, v in state.items()} | {f"momentum.{k}": v for k, v in (momentum or {}).items()}
    return save({k: tensors[k].detach().to(torch.float32).contiguous() for k in sorted(tensors)},
                metadata={"format": "teft-outer-checkpoint"})


def unbundle(data: bytes) -> tuple[ExpertState, ExpertState]:
    """Split an outer checkpoint into (state, momentum) in canonical key order."""
    from safetensors.torch import load

    tensors = load(data)
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    momentum = {k[len("momentum."):]: v for k, v in tensors.items() if k.startswith("momentum.")}
    return canonical(state), canonical(momentum)


def reduce(base: ExpertState, momentum: ExpertState | None, submissions: list[ExpertState],
           cfg: OuterConfig) -> tuple[ExpertState, ExpertState]:
    """Phi_{c+1} and the new momentum; with nothing merged both stay as they were."""
    if not submissions:
        return base, momentum or OrderedDict()
    optimizer = NesterovOuter(cfg, momentum or None)
    new_state = outer_step(base, submissions, optimizer)
    return new_state, optimizer.buffer
