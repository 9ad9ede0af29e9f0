"""A miner's cycle, top to bottom: train the selected experts from Phi_c, commit to the bytes, reveal them.

    train   H inner AdamW steps on this miner's own batches -> Phi_i; the payload is the pseudo-gradient
            Delta_i = Phi_c - Phi_i plus the error-feedback residual, encoded by the run's codec (what the
            codec did not send is the next residual, kept in the work directory), stored by hash (served
            from reveal on)
    commit  publish H(run, cycle, miner id, payload hash): binds the bytes to this miner before anyone
            knows the evaluation seed
    reveal  publish the payload hash and size; validators fetch the bytes and check them against the commit
    reduce  like every peer (roles.base)
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from swarm.net import records
from swarm.net.pieces import pieces_root
from swarm.net.work import solve
from swarm.protocol.cyclelog import Cycle
from swarm.protocol.runtime import Runtime
from swarm.roles.base import Role
from teft.data import iterate_batches
from teft.outer import pseudo_gradient
from teft.state import ExpertState, load_state, to_bytes
from teft.train import Interrupted, TrainConfig, train_experts

logger = logging.getLogger("swarm.peer")


@dataclass
class Submission:
    """A miner's trained state Phi_i, the payload bytes it sends, its inner losses and AdamW moments, the delta
    the payload decodes to and the error-feedback residual it leaves (None: not computed)."""

    state: ExpertState
    payload: bytes
    losses: list[float] = field(default_factory=list)
    moments: dict[str, torch.Tensor] = field(default_factory=dict)
    delta: ExpertState | None = None
    residual: ExpertState | None = None
    steps: int | None = None  # inner steps trained (fewer than H when the commit deadline came first); None: not
    #                           counted (a submission not made by the inner loop)


def encode_state(rt: Runtime, base: ExpertState, state: ExpertState) -> bytes:
    """The payload of a state trained from `base`, without error feedback: its pseudo-gradient, encoded."""
    return rt.codec.encode(pseudo_gradient(base, state))


def train_submission(rt: Runtime, base: ExpertState, miner_id: str, cycle: int, should_stop=None,
                     moments: dict[str, torch.Tensor] | None = None, cfg: TrainConfig | None = None,
                     time_up=None, residual: ExpertState | None = None) -> Submission:
    """H inner steps from `base` on this miner's batches for this cycle (fewer if `time_up` says so); the
    model is restored afterwards.

    `moments`: the AdamW state kept from the miner's previous cycle (manifest inner.keep_moments);
    `residual`: what the codec did not send of the miner's earlier deltas (error feedback)."""
    cfg = cfg or rt.inner_for(cycle)
    load_state(rt.model, rt.layout, base)
    try:
        batches = iterate_batches(rt.train_blocks, rt.manifest.inner.batch_size, f"{miner_id}/{cycle}", cfg.steps)
        result = train_experts(rt.model, rt.layout, rt.expert_map, batches, cfg, should_stop=should_stop, init=base,
                               moments=moments, time_up=time_up)
    finally:
        load_state(rt.model, rt.layout, base)
    # the fp32 masters: on a bf16 model, finer than the weights it holds
    payload, sent, left = rt.codec.compress(pseudo_gradient(base, result.state), residual, rt.manifest.max_delta_norm)
    return Submission(result.state, payload, result.losses, result.moments, sent, left, result.steps_done)


COMMIT_RESERVE_S = 2.0  # kept free before the commit phase ends: saving the payload and storing the commit
WORST_HASH_RATE = 2e5  # work hashes per second of one loaded core (measured ~3.7e5 beside a 26-peer swarm)


def train_deadline(p, number: int) -> float:
    """When a miner stops training (swarm clock): late enough for every step on time, early enough that the
    proof of work and the commit still fit before the commit phase ends."""
    work_s = (1 << max(p.manifest.commit_work_bits, 0)) / WORST_HASH_RATE
    return p.clock.phase_end(number, "commit") - COMMIT_RESERVE_S - work_s


def residual_bytes(residual: ExpertState | None) -> bytes:
    """A residual as a state file; one with no tensors when it is zero (a lossless codec within the bound), so a
    run with fp32 payloads writes a few bytes per cycle, not a second copy of the state."""
    if not residual or not any(bool(v.any()) for v in residual.values()):
        return to_bytes(OrderedDict())
    return to_bytes(residual)


def solve_in_phase(p, number: int, bound: str) -> int | None:
    """The proof of work for a commit digest, given until the commit phase ends (None if it did not finish)."""
    left = p.clock.phase_end(number, "commit") - p.now()
    return solve(bound, p.manifest.commit_work_bits, p.stop.is_set, time.monotonic() + max(left, 0.0))


class Miner(Role):
    kind = "miner"

    def __init__(self, peer):
        super().__init__(peer)
        self.payload: tuple[str, bytes] | None = None  # (hash, bytes) of this cycle's submission
        self.nonce: int | None = None  # the proof of work of its commit

    def on_sync(self, cycle: Cycle) -> None:
        super().on_sync(cycle)
        self.payload, self.nonce = None, None

    def on_train(self, cycle: Cycle) -> None:
        p = self.peer
        if not cycle.fresh:
            return  # joined after the train phase began: too late to submit this cycle
        sub = self.submission(cycle)
        if sub is None:
            return
        if p.now() >= p.clock.phase_end(cycle.number, "commit"):
            logger.warning("training overran the commit phase of cycle %d; no submission", cycle.number)
            cycle.log.note += "training overran the commit phase; "
            return
        steps = p.rt.inner_for(cycle.number).steps
        if sub.steps is not None and sub.steps < steps:
            logger.warning("cycle %d: trained %d of %d inner steps before the commit deadline; submitting those "
                           "(this machine is slower than the manifest's train phase assumes)", cycle.number,
                           sub.steps, steps)
            cycle.log.note += f"trained {sub.steps} of {steps} steps before the commit deadline; "
        self.payload = (p.store.save_payload(sub.payload), sub.payload)
        cycle.log.submitted = self.payload[0]
        # the commit's proof of work now, in what is left of the train phase, not in the short commit phase
        self.nonce = solve_in_phase(p, cycle.number, records.commit_digest(p.run_id, cycle.number, p.me,
                                                                           self.payload[0]))
        cycle.log.train_loss = [sub.losses[0], sub.losses[-1]] if sub.losses else []
        cycle.log.train_loss_mean = sum(sub.losses) / len(sub.losses) if sub.losses else None

    def submission(self, cycle: Cycle) -> Submission | None:
        """This cycle's honest work; None if the peer is stopping. Kept moments and the codec's residual are
        saved whether or not the payload is merged, tagged by cycle, so a restart in this cycle retrains from
        the previous ones."""
        p = self.peer
        keep = p.manifest.inner.keep_moments
        moments = p.store.load_moments(before=cycle.number) if keep else None
        residual = p.store.load_tagged("residual", before=cycle.number)
        if residual and {k: tuple(v.shape) for k, v in residual.items()} != dict(p.rt.codec.shapes):
            logger.warning("the stored error-feedback residual is for another expert map; starting without one")
            residual = None
        try:
            deadline = train_deadline(p, cycle.number)
            sub = train_submission(p.rt, p.state, p.me, cycle.number, p.stop.is_set, moments,
                                   time_up=lambda: p.now() >= deadline, residual=residual or None)
        except Interrupted:
            return None
        if keep:
            p.store.save_moments(cycle.number, to_bytes(sub.moments))
        p.store.save_tagged("residual", cycle.number, residual_bytes(sub.residual))
        return sub

    def on_commit(self, cycle: Cycle) -> None:
        if cycle.fresh and self.payload:
            self.commit(cycle.number, self.payload[0], self.nonce)

    def commit(self, number: int, digest: str, nonce: int | None = None) -> None:
        """Publish the commit with its proof of work (solved here unless given)."""
        p = self.peer
        bound = records.commit_digest(p.run_id, number, p.me, digest)
        if nonce is None:
            nonce = self.nonce = solve_in_phase(p, number, bound)
        if nonce is None:
            logger.warning("cycle %d: the commit's proof of work (%d bits) did not finish in the commit phase",
                           number, p.manifest.commit_work_bits)
            return
        p.put(number, "commit", records.CommitRecord(digest=bound, nonce=nonce))

    def on_reveal(self, cycle: Cycle) -> None:
        if self.payload:
            self.reveal(cycle.number, self.payload[0])
            self.reach_validators(cycle)

    def reach_validators(self, cycle: Cycle) -> None:
        """Dial every allowlisted validator, so that each can open its fetch stream to us over our connection.

        Validators fetch a payload by opening a stream to its miner. Behind a NAT nobody can dial the miner
        (measured in the network lab: 'all dials failed ... network is unreachable', nothing merged), but a
        libp2p connection carries streams opened by either side, and p2pd opens a stream over a connection
        it already has rather than dialling. Dialled here, after the reveal, it is fresh when the evaluate
        phase begins; a miner that can be dialled loses nothing by it. (Why this and not a relay or a push:
        README, "A swarm across a real network".)"""
        p, number = self.peer, cycle.number
        known = p.validator_addresses(number)
        left = p.clock.phase_end(number, "reveal") - p.now()
        if not known or left <= 0.5:
            return
        started = time.monotonic()
        failed = {pid: why for pid, why in p.net.connect(known, timeout=min(5.0, left)).items() if why}
        logger.info("cycle %d: connected to %d of %d validators in %.2fs", number, len(known) - len(failed),
                    len(known), time.monotonic() - started)
        if failed:
            logger.warning("cycle %d: could not reach %d of %d validators (they fetch our payload over that "
                           "connection): %s", number, len(failed), len(known),
                           "; ".join(f"{pid[:12]}: {why}" for pid, why in sorted(failed.items())))
            cycle.log.note += f"{len(failed)} validator(s) not reached; "

    def reveal(self, number: int, digest: str) -> None:
        """Publish the payload hash with the commit's proof of work (honest nodes store the reveal only with it)."""
        p = self.peer
        nonce = self.nonce if self.nonce is not None else 0
        data = self.payload[1] if self.payload is not None and self.payload[0] == digest else p.store.find(digest)
        p.put(number, "reveal", records.RevealRecord(payload_hash=digest, size=p.rt.payload_size, nonce=nonce,
                                                     pieces=pieces_root(data) if data is not None else None))
