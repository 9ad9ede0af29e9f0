"""A validator's cycle, top to bottom: a secret seed, the commits it saw in time, checks and Proof-of-Loss.

    sync      draw a fresh secret seed (and, in cycle 0, measure the start state for the report)
    commit    publish H(seed, cycle, validator id); watch the miners' and validators' commits until
              just after the commit phase ends: a commit first seen later never counts
    reveal    publish the seed
    evaluate  combine the allowlisted validators' revealed seeds into the evaluation seed, draw the
              validation subset from it, fetch each committed payload, check it (commit, replay, keys,
              shapes, dtype, finiteness, delta norm) and score it by Proof-of-Loss; publish the ranking
    reduce    like every peer (roles.base), then measure Phi_{c+1} for the report

The subset comes from seeds revealed only after miners committed, so nobody could train on it.
"""

from __future__ import annotations

import hashlib
import logging
import secrets

import torch

from swarm.errors import TransferError
from swarm.net import records
from swarm.net.records import SignedRecord
from swarm.protocol.consensus import Score, ranking_record
from swarm.protocol.cycle import Cycle
from swarm.protocol.runtime import Runtime
from swarm.roles.base import Role
from teft.data import subset
from teft.errors import TeftError
from teft.pol import score, state_loss
from teft.state import ExpertState, check_state, from_bytes

logger = logging.getLogger("swarm.peer")


def combined_seed(revealed: dict[str, str]) -> bytes:
    """One seed from all valid reveals (validator id -> seed hex), independent of arrival order."""
    digest = hashlib.sha256(b"teft-eval-seed")
    for validator in sorted(revealed):
        digest.update(validator.encode() + b"\0" + bytes.fromhex(revealed[validator]) + b"\0")
    return digest.digest()


def validation_batches(rt: Runtime, seed: bytes) -> list[torch.Tensor]:
    """This cycle's Proof-of-Loss subset, drawn from the combined seed, in batches."""
    spec = rt.manifest.data
    blocks = subset(rt.validation_blocks, seed, spec.validation_blocks)
    return [blocks[i:i + spec.eval_batch_size] for i in range(0, len(blocks), spec.eval_batch_size)]


def judge(rt: Runtime, base: ExpertState, base_loss: float, miner: str, payload_hash: str, data: bytes,
          batches: list[torch.Tensor]) -> Score:
    """Check a submission's bytes and score it by Proof-of-Loss; anything malformed scores zero with a reason."""
    try:
        state = from_bytes(data)
    except TeftError as err:
        return Score(miner, payload_hash, float("inf"), 0.0, str(err))
    reason = check_state(state, rt.layout, rt.expert_map, dtype=rt.payload_dtype,
                         max_norm=rt.manifest.max_delta_norm, reference=base)
    if reason:
        return Score(miner, payload_hash, float("inf"), 0.0, reason)
    loss = state_loss(rt.model, rt.layout, state, batches)
    return Score(miner, payload_hash, loss, score(base_loss, loss))


def rejected(miner: str, payload_hash: str, reason: str) -> Score:
    return Score(miner, payload_hash, float("inf"), 0.0, reason)


class Validator(Role):
    kind = "validator"

    def __init__(self, peer):
        super().__init__(peer)
        self.seed = b""
        self.seen: dict[str, dict[str, SignedRecord]] = {}  # kind -> peer id -> first record seen in time

    def on_sync(self, cycle: Cycle) -> None:
        super().on_sync(cycle)
        self.seed, self.seen = secrets.token_bytes(32), {}
        if cycle.number == 0:
            cycle.log.start_target_loss, cycle.log.start_general_loss = self.peer.measure()

    def on_commit(self, cycle: Cycle) -> None:
        if not cycle.fresh:
            return  # joined after the train phase: the seed would come too late to count
        p = self.peer
        p.put(cycle.number, "seed-commit", records.SeedCommitRecord(digest=records.seed_digest(self.seed, cycle.number,
                                                                                              p.me)))
        self.seen = self.watch_commits(cycle.number)

    def watch_commits(self, number: int) -> dict[str, dict[str, SignedRecord]]:
        """Commits first seen before the deadline (reveal start plus up to a second of grace).

        Polls through the commit phase and keeps the first record it saw from each peer; a commit that first
        appears later is never evaluated, whatever its author claims about its timing.
        """
        p = self.peer
        start, end = p.window(number, "reveal")
        deadline = start + min(1.0, (end - start) / 4)
        seen: dict[str, dict[str, SignedRecord]] = {"commit": {}, "seed-commit": {}}
        while not p.stop.is_set():
            for kind, found in seen.items():
                for pid, signed in p.get(number, kind).items():
                    found.setdefault(pid, signed)
            if deadline - p.now() <= 0.1:
                break
            p.wait_until(min(p.now() + 1.0, deadline - 0.1))
        return seen

    def on_reveal(self, cycle: Cycle) -> None:
        if self.seen:
            self.peer.put(cycle.number, "seed-reveal", records.SeedReveal(seed=self.seed.hex()))

    def on_evaluate(self, cycle: Cycle) -> None:
        if not self.seen:
            return
        p, log, c = self.peer, cycle.log, cycle.number
        batches = validation_batches(p.rt, self.evaluation_seed(c))
        base_loss = state_loss(p.rt.model, p.rt.layout, p.state, batches)
        log.base_loss = base_loss
        reveals = p.get(c, "reveal")
        deadline = p.clock.phase_end(c, "evaluate") - 1.0
        scores = []
        for pid, commit in sorted(self.seen["commit"].items()):
            reveal = reveals.get(pid)
            if reveal is None:  # not ranked at all: there are no bytes to name
                log.rejected[pid] = "committed but did not reveal"
                continue
            digest = reveal.record.payload_hash
            if records.commit_digest(p.run_id, c, pid, digest) != commit.record.digest:
                log.rejected[pid] = "reveal does not match its commit"
                continue
            result = self.evaluate_one(c, pid, digest, base_loss, batches, deadline)
            if result.reason:
                log.rejected[pid] = result.reason
                logger.warning("cycle %d: %s scores 0: %s", c, pid[:12], result.reason)
            log.scores[pid] = result.score
            scores.append(result)
        p.put(c, "ranking", ranking_record(self.ranking(scores)))
        seen = p.progress.seen_payloads
        for digest in [d for d, first in seen.items() if first < c - 10]:
            del seen[digest]

    def evaluation_seed(self, number: int) -> bytes:
        """The combined seed of the allowlisted validators whose reveal matches the commit seen in time."""
        p = self.peer
        allowlist = set(p.manifest.validators)
        reveals = p.get(number, "seed-reveal")
        seeds = {}
        for pid, commit in self.seen["seed-commit"].items():
            got = reveals.get(pid)
            if got and commit.owner in allowlist \
                    and records.seed_digest(got.record.seed, number, pid) == commit.record.digest:
                seeds[pid] = got.record.seed
        return combined_seed(seeds)

    def evaluate_one(self, number: int, pid: str, digest: str, base_loss: float, batches: list[torch.Tensor],
                     deadline: float) -> Score:
        """One revealed submission's Score: replay check, fetch within the phase, then judge."""
        p = self.peer
        first = p.progress.seen_payloads.setdefault(digest, number)
        if first < number:
            return rejected(pid, digest, f"replayed payload from cycle {first}")
        if p.now() >= deadline:
            return rejected(pid, digest, "no time left in the evaluate phase")
        try:
            data = p.fetch(digest, [pid], number, p.rt.payload_size, exact=True)
        except TransferError as err:
            return rejected(pid, digest, str(err))
        p.store.save_payload(data)
        return judge(p.rt, p.state, base_loss, pid, digest, data, batches)

    def ranking(self, scores: list[Score]) -> list[Score]:
        """What this validator publishes: its scores as computed."""
        return scores

    def on_reduce(self, cycle: Cycle) -> None:
        super().on_reduce(cycle)
        if cycle.log.state_hash:
            cycle.log.target_loss, cycle.log.general_loss = self.peer.measure()
