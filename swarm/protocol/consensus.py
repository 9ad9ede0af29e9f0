"""Reduce: combine validators' rankings by one rule and apply the outer step, identically on every peer.

The rule: for each (miner, payload hash), the median over the allowlisted validators' scores, where a
validator that did not score that exact pair counts as zero; at least `quorum` rankings are needed or
nothing is merged. The top-k pairs with a positive median of at least a fraction of the best median
are merged, one per miner and per payload, in a fixed order. A minority of validators cannot move a
median past the honest majority, so a liar can neither push a bad submission in nor a good one out.

The agreed object is the outer checkpoint (teft.outer.checkpoint_bytes): Phi_{c+1} and the Nesterov
momentum in one canonical file, so a late joiner that fetches it by hash continues like everyone else.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from swarm.net.records import MAX_RANKED, RankingRecord, SignedRecord
from teft.outer import NesterovOuter, OuterConfig, merge
from teft.state import ExpertState


@dataclass(frozen=True)
class Score:
    """One submission's Proof-of-Loss result: what a validator computes, publishes and peers merge by."""

    miner: str  # peer id
    payload_hash: str
    loss: float
    score: float
    reason: str | None = None  # why it scored zero without evaluation; stays local, never published


def ranking_record(scores: list[Score]) -> RankingRecord:
    """The signed record of a validator's positive scores, best first, at most MAX_RANKED of them.

    Zeros are left out (an unlisted pair counts as zero in the median anyway), so the record's size never
    depends on how many peers committed: a flood of throwaway submissions cannot push it over the cap.
    """
    ordered = sorted((s for s in scores if math.isfinite(s.score) and s.score > 0),
                     key=lambda s: (-s.score, s.miner, s.payload_hash))[:MAX_RANKED]
    return RankingRecord(entries=[(s.miner, s.payload_hash, min(float(s.loss), 1e30), float(s.score))
                                  for s in ordered])


def scores_of(record: RankingRecord) -> list[Score]:
    """The Scores a ranking record lists."""
    return [Score(miner, digest, loss, score) for miner, digest, loss, score in record.entries]


@dataclass
class Decision:
    """What the rankings decided for one cycle."""

    quorum_met: bool
    validators: list[str]  # public keys of the allowlisted validators whose rankings counted
    merged: list[Score]  # in merge order; score = the median, loss = NaN (validators' losses differ)
    medians: dict[tuple[str, str], float] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # validator key -> miner -> score


def combine(rankings: dict[str, list[Score]], allowlist: set[str] | list[str], quorum: int, top_k: int,
            min_relative: float = 0.0) -> Decision:
    """The merge decision from rankings keyed by validator public key; non-allowlisted ones are ignored.

    A pair is merged only if its median is positive and at least `min_relative` of the best median:
    a perturbation that lowers the loss by luck (noise) scores a sliver of what training does.
    """
    allowed = set(allowlist)
    valid = {v: scores for v, scores in sorted(rankings.items()) if v in allowed}
    table = {v: {s.miner: s.score for s in scores} for v, scores in valid.items()}
    if len(valid) < quorum:
        return Decision(False, sorted(valid), [], {}, table)
    pairs = sorted({(s.miner, s.payload_hash) for scores in valid.values() for s in scores})
    medians = {}
    for miner, digest in pairs:
        per_validator = []
        for scores in valid.values():
            match = [s.score for s in scores if s.miner == miner and s.payload_hash == digest]
            value = match[0] if match else 0.0
            per_validator.append(value if math.isfinite(value) and value > 0 else 0.0)  # NaN, negatives: 0
        medians[(miner, digest)] = float(statistics.median(per_validator))
    order = sorted(medians, key=lambda p: (-medians[p], p[0], p[1]))
    floor = min_relative * medians[order[0]] if order else 0.0
    merged: list[Score] = []
    miners, digests = set(), set()
    for miner, digest in order:
        if medians[(miner, digest)] <= max(floor, 0.0) or len(merged) >= top_k:
            break
        if miner in miners or digest in digests:  # one submission per miner; identical bytes count once
            continue
        merged.append(Score(miner, digest, math.nan, medians[(miner, digest)]))
        miners.add(miner)
        digests.add(digest)
    return Decision(True, sorted(valid), merged, medians, table)


def decide(rankings: dict[str, SignedRecord], manifest) -> Decision:
    """`combine` on a cycle's ranking records (by owner peer id) with the run's own allowlist, quorum, top-k
    and merge floor: the one call every peer and `swarm.status` make, so they cannot differ."""
    by_owner = {signed.owner: scores_of(signed.record) for signed in rankings.values()
                if isinstance(signed.record, RankingRecord)}
    return combine(by_owner, manifest.validators, manifest.quorum, manifest.outer.top_k,
                   manifest.outer.min_relative_score)


@dataclass
class StateVote:
    """What the allowlisted validators' state records say of one cycle's Phi_{c+1}."""

    agreed: str | None  # the hash a strict quorum published, or None
    votes: dict[str, str]  # allowlisted validator public key -> the hash it published
    dissent: list[str]  # allowlisted validators that published a hash other than the agreed one
    silent: list[str]  # allowlisted validators that published none

    @property
    def settled(self) -> bool:
        """Whether the agreed hash stays agreed whatever the silent validators still publish. A peer that adopts
        an unsettled quorum early (2 of 4 read before the other 2 voted for another hash) leaves the peers that
        read the tie later, and carry the old state forward, on another state."""
        if self.agreed is None:
            return False
        counts = Counter(self.votes.values())
        runner_up = max((n for h, n in counts.items() if h != self.agreed), default=0)
        return counts[self.agreed] > runner_up + len(self.silent)


def agree_on_state(records: dict[str, SignedRecord], allowlist: list[str] | set[str], quorum: int) -> StateVote:
    """The agreed Phi hash: one that at least `quorum` allowlisted validators published and more than published
    any other. No tie is ever broken: a tie, or too few votes, agrees on nothing, and every peer then carries
    the last agreed state forward (Peer.sync_to), because any tie-break (lowest hash, first key) is a value an
    attacker can grind."""
    allowed = set(allowlist)
    votes = {s.owner: s.record.state_hash for s in records.values() if s.owner in allowed}
    counts = Counter(votes.values()).most_common()
    agreed = None
    if counts and counts[0][1] >= max(quorum, 1) and (len(counts) == 1 or counts[0][1] > counts[1][1]):
        agreed = counts[0][0]
    dissent = sorted(v for v, h in votes.items() if agreed is not None and h != agreed)
    return StateVote(agreed, votes, dissent, sorted(allowed - set(votes)))


def agreed_root(records: dict[str, SignedRecord], allowlist: list[str] | set[str], agreed: str | None,
                quorum: int) -> str | None:
    """The pieces root of the agreed checkpoint: the one that at least `quorum` of the allowlisted validators that
    voted for the agreed hash published with it, else None (the checkpoint is then fetched whole, checked by its
    hash). A lying validator's root can cost a peer the pieces it checked against it, never a wrong state: the
    whole is checked against the agreed hash too."""
    if agreed is None:
        return None
    allowed = set(allowlist)
    roots = Counter(s.record.pieces for s in records.values()
                    if s.owner in allowed and s.record.state_hash == agreed and s.record.pieces).most_common(1)
    return roots[0][0] if roots and roots[0][1] >= max(quorum, 1) else None


def step_bound(cfg: OuterConfig, max_delta_norm: float, cycles: int) -> tuple[float, float]:
    """How far `cycles` outer steps can move Phi, and how large the momentum can be, in L2 norm, when every
    merged delta is within `max_delta_norm`: a checkpoint beyond either was not computed by this run's reduce,
    whoever voted for it. The buffer is a geometric sum of bounded deltas (|m| <= N / (1 - mu)), and a
    Nesterov update delta + mu*m is at most N / (1 - mu) too."""
    mu = min(max(cfg.momentum, 0.0), 0.999)
    momentum = max_delta_norm / (1.0 - mu)
    return cycles * cfg.lr * momentum * 1.001 + 1e-4, momentum * 1.001 + 1e-4


def reduce(base: ExpertState, momentum: ExpertState | None, deltas: list[ExpertState],
           cfg: OuterConfig) -> tuple[ExpertState, ExpertState]:
    """Phi_{c+1} and the new momentum from the merged (decoded) pseudo-gradients, in merge order; with nothing
    merged both stay as they were."""
    if not deltas:
        return base, momentum or OrderedDict()
    optimizer = NesterovOuter(cfg, momentum or None)
    new_state = optimizer.step(base, merge(deltas))
    return new_state, optimizer.buffer


def why_nothing_merged(log, manifest) -> str:
    """Why a cycle merged no submission, from what one peer's CycleLog saw: the first of no quorum, no
    commits seen, all scored zero (with the reasons), a merged payload missing, or no median high enough."""
    if not log.quorum_met:
        return f"no quorum ({len(log.rankings)} allowlisted ranking(s) read, quorum {manifest.quorum})"
    if "merged payload" in log.note:
        return "a merged payload could not be fetched or used; the agreed state will be fetched"
    if not log.medians:
        if log.role != "validator":
            return "no allowlisted validator ranked a positive score"
        if not log.scores and not log.rejected:
            return "this validator saw no commit in time"
        reasons = {m: log.rejected.get(m, "lost Proof-of-Loss (score 0)") for m in set(log.scores) | set(log.rejected)}
        shown = "; ".join(f"{m[:8]}: {why}" for m, why in sorted(reasons.items())[:6])
        return f"all {len(reasons)} submission(s) scored zero ({shown})"
    return f"no median score above the merge floor ({manifest.outer.min_relative_score} of the best)"
