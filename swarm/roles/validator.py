"""A validator's cycle, top to bottom: a secret seed, the commits it saw in time, checks and Proof-of-Loss.

    sync      draw a fresh secret seed (and, in cycle 0, measure the start state for the report)
    commit    publish H(seed, cycle, validator id); watch the miners' and validators' commits until
              just after the commit phase ends: a commit first seen later never counts
    reveal    watch the miners' reveals until 60% into the reveal phase (a reveal first seen later
              never counts), then publish the seed
    evaluate  combine the allowlisted validators' revealed seeds into the evaluation seed, draw the
              validation subset from it, order the commits that revealed in time (last cycle's merged
              miners first, then by the seed, keys with an address of their own first), fetch at most
              16 x max_submissions of them, 8 at once, and judge the first max_submissions as they arrive
              (decoded by the codec, finiteness, delta norm, Proof-of-Loss) while time is left; publish the
              ranking of the positive scores
    reduce    like every peer (roles.base), then measure Phi_{c+1} for the report

The subset comes from seeds revealed only after miners committed, so nobody could train on it; and the
seeds are revealed only after the miners' reveals stopped counting, so the order they give cannot be
chosen by revealing only the keys it puts first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import secrets
from dataclasses import dataclass

import torch

from swarm.errors import SwarmError
from swarm.net import records
from swarm.net.identity import peer_key_of
from swarm.net.records import SignedRecord
from swarm.net.work import meets
from swarm.protocol.consensus import Score, decide, ranking_record
from swarm.protocol.cycle import ADDRESS_WAIT_S
from swarm.protocol.cyclelog import Cycle
from swarm.protocol.runtime import Runtime
from swarm.roles.base import Role
from teft.codec import apply_delta, check_delta
from teft.data import iterate_batches, subset
from teft.errors import TeftError
from teft.pol import score, state_block_losses
from teft.state import ExpertState

logger = logging.getLogger("swarm.peer")


def combined_seed(revealed: dict[str, str]) -> bytes:
    """One seed from all valid reveals (validator id -> seed hex), independent of arrival order."""
    digest = hashlib.sha256(b"teft-eval-seed")
    for validator in sorted(revealed):
        digest.update(validator.encode() + b"\0" + bytes.fromhex(revealed[validator]) + b"\0")
    return digest.digest()


OVERFIT_SLACK = 0.01  # nats: gains this close together are never called overfit, whatever their ratio
OVERFIT_Z = 4.0  # standard errors the public gain must exceed the held-out gain by: honest gaps reached 2.7,
#                  updates fitted to the public blocks 7.4 and more (scripts/overfit_check.py, README)
OVERFIT_MARGIN: float | None = None  # nats over ratio x the held-out gain that would flag an update however noisy
#   its blocks. None: 0.05 caught val-overfit's worst 5 of 60 (excesses to 0.081; honest ones reached 0.031 in the
#   study), but zeroed an honest miner at two validators in a main job (0.059 public against 0.001 held-out, 2.4
#   standard errors, runs/main-20261203-143820 cycle 0); the assigned-batches check zeroes val-overfit instead


ASSIGNED_CHECK_STEPS = 8  # an update is checked on the batches of the first this many inner steps (at most H): a
#                          miner that the commit deadline cut short has trained those


OVERFIT_CHECK_SHARE = 4  # the public-split check measures this fraction of the scoring blocks: it only has to
#                          see a gain far above the held-out one, and every judgement pays for its blocks


def validation_batches(rt: Runtime, seed: bytes, blocks: torch.Tensor | None = None,
                       count: int | None = None) -> list[torch.Tensor]:
    """This cycle's Proof-of-Loss subset of `blocks` (default: the public validation split), in batches."""
    spec = rt.manifest.data
    chosen = subset(rt.validation_blocks if blocks is None else blocks, seed, count or spec.validation_blocks)
    return [chosen[i:i + spec.eval_batch_size] for i in range(0, len(chosen), spec.eval_batch_size)]


@dataclass
class Yardstick:
    """What a cycle's submissions are measured on: the scoring subset (private held-out data when the
    validator has some) and, beside it, the public split's subset that flags updates fitted to public data;
    each block's loss under the cycle's start state, so a judgement sees each block's gain."""

    batches: list[torch.Tensor]
    base_blocks: torch.Tensor
    public: list[torch.Tensor] | None = None
    public_base_blocks: torch.Tensor | None = None
    cycle: int = 0  # whose batches a miner trained on: assigned_batches(rt, miner, cycle)
    general: list[torch.Tensor] | None = None  # general text an update's drift is measured on (max_general_drift)
    general_base_blocks: torch.Tensor | None = None

    @property
    def base_loss(self) -> float:
        return float(self.base_blocks.mean())


def yardstick(rt: Runtime, state: ExpertState, seed: bytes, cycle: int = 0) -> Yardstick:
    batches = validation_batches(rt, seed, rt.private_blocks)
    stick = Yardstick(batches, state_block_losses(rt.model, rt.layout, state, batches), cycle=cycle)
    if rt.private_blocks is not None:
        count = max(rt.manifest.data.validation_blocks // OVERFIT_CHECK_SHARE, rt.manifest.data.eval_batch_size)
        stick.public = validation_batches(rt, seed, count=count)
        stick.public_base_blocks = state_block_losses(rt.model, rt.layout, state, stick.public)
    if rt.manifest.data.max_general_drift is not None and rt.general_blocks is not None:
        stick.general = validation_batches(rt, b"general\0" + seed, rt.general_blocks,
                                           count=rt.manifest.data.general_check_blocks)
        stick.general_base_blocks = state_block_losses(rt.model, rt.layout, state, stick.general)
    return stick


def overfit_flag(public: torch.Tensor, held: torch.Tensor, ratio: float, slack: float = OVERFIT_SLACK,
                 z: float | None = OVERFIT_Z, margin: float | None = OVERFIT_MARGIN) -> bool:
    """Was an update fitted to the public split? `public` and `held` are its per-block gains (base loss minus its
    loss) on the public check subset and on the held-out scoring subset. The public gain must exceed `ratio` x
    the held-out gain by more than `slack`, and that excess must be either large (over `margin` nats) or no
    accident (the two gains over `z` standard errors of their difference apart, from the blocks' spread): a
    handful of public blocks can gain twice what 32 held-out blocks gain by chance alone, and an honest miner
    must not pay for that. With neither `z` nor `margin`, the excess alone decides (the rule before)."""
    pub, hel, errors = overfit_gap(public, held)
    excess = pub - ratio * max(hel, 0.0)
    if not excess > slack:
        return False
    if z is None and margin is None:
        return True
    return (z is not None and errors > z) or (margin is not None and excess > margin)


def overfit_gap(public: torch.Tensor, held: torch.Tensor) -> tuple[float, float, float]:
    """(public gain, held-out gain, how many standard errors of their difference the first exceeds the second
    by); the standard error comes from the blocks' spread, two independent samples."""
    pub, hel = float(public.mean()), float(held.mean())
    spread = float(public.var() / len(public) + held.var() / len(held)) if len(public) > 1 and len(held) > 1 else 0.0
    return pub, hel, (pub - hel) / math.sqrt(spread) if spread > 0 else (math.inf if pub > hel else 0.0)


def assigned_batches(rt: Runtime, miner: str, cycle: int) -> list[torch.Tensor]:
    """The blocks of the miner's first ASSIGNED_CHECK_STEPS inner steps this cycle, in scoring batches: its
    batches follow from its id and the cycle alone (swarm.roles.miner.train_submission), so anyone can list them."""
    steps = min(ASSIGNED_CHECK_STEPS, rt.inner_for(cycle).steps)
    blocks = torch.cat(list(iterate_batches(rt.train_blocks, rt.manifest.inner.batch_size, f"{miner}/{cycle}", steps)))
    size = rt.manifest.data.eval_batch_size
    return [blocks[i:i + size] for i in range(0, len(blocks), size)]


def judge(rt: Runtime, base: ExpertState, stick: Yardstick, miner: str, payload_hash: str, data: bytes) -> Score:
    """Check a submission's bytes and score it by Proof-of-Loss; anything malformed scores zero with a reason.

    With private held-out data, a submission whose gain on the public validation split is far above its gain
    on the held-out data (overfit_flag) was fitted to public data, the only data a miner could have aimed at:
    it scores zero. So does one not trained on its assigned batches (assigned_z), and one that raises the
    general-text loss past data.max_general_drift: Proof-of-Loss alone measures the target, and an update trained
    on L_target - w L_general would score like an honest one.
    """
    try:  # the decoded delta applied to Phi_t is scored: exactly what the reduce would merge
        delta = rt.codec.decode(data)
    except TeftError as err:
        return Score(miner, payload_hash, float("inf"), 0.0, str(err))
    reason = check_delta(delta, rt.manifest.max_delta_norm)  # a zero delta (free-riding) costs no forward pass
    if reason:
        return Score(miner, payload_hash, float("inf"), 0.0, reason)
    state = apply_delta(base, delta)
    blocks = state_block_losses(rt.model, rt.layout, state, stick.batches)
    loss = float(blocks.mean())
    gain = score(stick.base_loss, loss)
    if stick.public is not None:
        public = stick.public_base_blocks - state_block_losses(rt.model, rt.layout, state, stick.public)
        held = stick.base_blocks - blocks
        if overfit_flag(public, held, rt.manifest.data.overfit_ratio):
            errors = overfit_gap(public, held)[2]
            return Score(miner, payload_hash, loss, 0.0, f"gains {float(public.mean()):.4f} on the public validation "
                         f"split but {gain:.4f} on held-out data ({errors:.1f} standard errors apart): fitted to "
                         "public data")
    need = rt.manifest.data.assigned_z
    if need > 0 and gain > 0:  # an update that gains nothing scores zero anyway: no forward pass spent on it
        own = assigned_batches(rt, miner, stick.cycle)
        mine = state_block_losses(rt.model, rt.layout, base, own) - state_block_losses(rt.model, rt.layout, state, own)
        own_gain, _, errors = overfit_gap(mine, stick.base_blocks - blocks)
        if not errors >= need:
            return Score(miner, payload_hash, loss, 0.0, f"gains {own_gain:.4f} on its own assigned batches against "
                         f"{gain:.4f} on the scoring data ({errors:.1f} standard errors over it, {need:g} needed): "
                         "not trained on its assigned batches")
    limit = rt.manifest.data.max_general_drift
    if stick.general is not None and gain > 0:  # only an update that gains could be merged
        drift = float((state_block_losses(rt.model, rt.layout, state, stick.general)
                       - stick.general_base_blocks).mean())
        if drift > limit:
            return Score(miner, payload_hash, loss, 0.0, f"raises the general-text loss by {drift:.4f} nats on "
                         f"{sum(len(b) for b in stick.general)} blocks, over the {limit:g} allowed: traded general "
                         "ability for the target")
    return Score(miner, payload_hash, loss, gain)


FETCHES_PER_SLOT = 16  # payloads a validator may try to fetch per evaluation it may spend: a key that serves
#                        nothing costs a failed connect (~0.1 s, 8 at once), and the phase's clock bounds the rest


RANKING_RESERVE_S = 2.0  # of the evaluate phase kept for storing the ranking: with 1 s and a judgement that cost more
#                         than the one before, a validator's ranking reached the DHT as the reduce began, so some
#                         peers merged without it and honest states split (runs/main-20261203-152334, cycle 3)


LOG_READ_S = 3.0  # a DHT read whose result only labels the log waits this long at most

HOLDER_SHARE = 0.75  # of the evaluate phase's fetch budget one miner may take to send its payload. A miner on a
#                     home uplink sends every validator a copy at once: 2 validators fetching 923,592 bytes through
#                     a 4 Mbit/s uplink with 1% loss took 3.7 s each, and the default quarter of the budget (3.75 s)
#                     cut both off (network lab, README). Stallers are not let through by this: a holder that sends
#                     no frame within 3 s, or frames under 64 KiB/s, is dropped at once (swarm/net/transfer.py).


RELAY_SHARE = 0.3  # of the evaluate phase's fetch budget a validator waits for the validator that carries a
#                    payload (its miner's one upload) before it asks the miner itself


def carrier(digest: str, validators: list[str]) -> str:
    """The allowlisted validator that fetches this payload from its miner and serves the others: the same on
    every validator, spread over them by the payload's hash, so a miner's uplink sends one copy per cycle."""
    return min(validators, key=lambda v: hashlib.sha256(f"{digest}/{v}".encode()).digest())


REVEAL_SHARE = 0.6  # a DHT store takes seconds under load: honest reveals need most of the phase to be seen


UNREVEALED = "committed but did not reveal"


def reveal_deadline(clock, number: int) -> float:
    """The last moment a miner's reveal counts: REVEAL_SHARE into the reveal phase. Validators reveal their
    seeds only then, so the evaluation order is fixed by randomness nobody knew while reveals counted; the
    rest of the phase lets the seeds reach every validator before the evaluate phase reads them."""
    start, end = clock.phase_start(number, "reveal"), clock.phase_end(number, "reveal")
    return start + (end - start) * REVEAL_SHARE


def endpoint(maddr: str) -> str:
    """Where a multiaddr points, without the peer id: keys behind one listener share it."""
    return str(maddr).split("/p2p/", 1)[0]


def rejected(miner: str, payload_hash: str, reason: str) -> Score:
    return Score(miner, payload_hash, float("inf"), 0.0, reason)


class Validator(Role):
    kind = "validator"

    def __init__(self, peer):
        super().__init__(peer)
        self.seed = b""
        self.seen: dict[str, dict[str, SignedRecord]] = {}  # kind -> peer id -> first record seen in time
        self.roots: dict[str, str | None] = {}  # payload hash -> the pieces root its reveal names (candidates)

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
        start, end = self.peer.window(number, "reveal")
        return self.watch(number, ("commit", "seed-commit"), start + min(1.0, (end - start) / 4))

    def watch(self, number: int, kinds: tuple[str, ...], deadline: float) -> dict[str, dict[str, SignedRecord]]:
        """The first record seen from each peer, per kind, polling about once a second until `deadline`."""
        p = self.peer
        seen: dict[str, dict[str, SignedRecord]] = {kind: {} for kind in kinds}
        while not p.stop.is_set():
            for kind, found in seen.items():
                for pid, signed in p.get(number, kind).items():
                    found.setdefault(pid, signed)
            if deadline - p.now() <= 0.1:
                break
            p.wait_until(min(p.now() + 1.0, deadline - 0.1))
        return seen

    def on_reveal(self, cycle: Cycle) -> None:
        if not self.seen:
            return
        p = self.peer
        self.seen["reveal"] = self.watch(cycle.number, ("reveal",), reveal_deadline(p.clock, cycle.number))["reveal"]
        p.put(cycle.number, "seed-reveal", records.SeedReveal(seed=self.seed.hex()))
        # the evaluate phase orders and dials by the peers' addresses: read them in what is left of this phase
        p.addresses(cycle.number, wait_s=max(p.clock.phase_end(cycle.number, "reveal") - p.now(), 0.5))

    def on_evaluate(self, cycle: Cycle) -> None:
        if not self.seen:
            return
        p, log, c = self.peer, cycle.log, cycle.number
        seed = self.evaluation_seed(c)
        announced = p.addresses(c, wait_s=ADDRESS_WAIT_S)
        candidates = self.order(c, seed, self.candidates(cycle), announced)
        cap = p.manifest.max_submissions
        deadline = p.clock.phase_end(c, "evaluate") - RANKING_RESERVE_S
        # try up to FETCHES_PER_SLOT x the cap in that order (a payload that never arrives costs a failed fetch,
        # not an evaluation) and judge the first `cap` that arrive, as they arrive: a flood of keys that serve
        # nothing cannot crowd out the miners that do, and fetching runs beside the judging, never before it
        kept, unannounced = [], 0
        for pid, digest in candidates:  # reaching a key with no address costs the daemon a DHT lookup: a few only
            if announced and pid not in announced:  # (none known: the peers records were not read in time)
                unannounced += 1
                if unannounced > cap:
                    log.rejected[pid] = f"announced no addresses (at most {cap} such keys are tried)"
                    continue
            kept.append((pid, digest))
        candidates = kept
        tried = candidates[:FETCHES_PER_SLOT * cap]
        if len(candidates) > len(tried):
            log.note += f"{len(candidates) - len(tried)} submissions over the fetch cap of {len(tried)} not tried; "
        budget = max(deadline - p.now(), 0.0)
        crew = sorted(peer_key_of(v) for v in p.manifest.validators)
        wanted = []
        for pid, digest in tried:  # from the miner itself, or through the validator that carries it
            relay = carrier(digest, crew)
            wanted.append((digest, [pid] if relay in (p.me, pid) else [relay, pid]))
        arrivals = p.fetch_stream(wanted, c, p.rt.payload_size, budget_s=budget,
                                  timeout=max(budget * HOLDER_SHARE, 1.0), relay_wait_s=budget * RELAY_SHARE,
                                  keep=True, roots=self.roots)
        started = p.now()
        stick = yardstick(p.rt, p.state, seed, c)
        cost = p.now() - started  # a judgement measures what the yardstick measured: about as long
        log.base_loss = stick.base_loss
        scores, handled = [], set()
        with contextlib.closing(arrivals):
            for i, data, error in arrivals:
                pid, digest = tried[i]
                if data is None:
                    result = rejected(pid, digest, error or "payload not received")
                elif p.now() + cost >= deadline:  # the ranking must be out before the phase ends, for every reader
                    break
                else:
                    log.evaluated.append(pid)
                    began = p.now()
                    result = judge(p.rt, p.state, stick, pid, digest, data)
                    if math.isfinite(result.loss):  # a forward pass ran: the next judgement may cost as much as
                        cost = max(cost, p.now() - began)  # the dearest so far (an update that gains nothing skips
                        #                                    the assigned-batches check; an honest one pays for it)
                handled.add(i)
                self.record(c, log, result, scores)
                if len(log.evaluated) >= cap:
                    break  # the cycle's evaluations are spent: what arrives later stays unranked, like any later
        if len(log.evaluated) < cap:
            for i in sorted(set(range(len(tried))) - handled):
                self.record(c, log, rejected(*tried[i], "no time left in the evaluate phase"), scores)
        logger.info("cycle %d: judged %d of %d submissions (%d tried) in %.1fs, one judgement ~%.1fs", c,
                    len(log.evaluated), len(candidates), len(tried), p.now() - started, cost)
        p.put(c, "ranking", ranking_record(self.ranking(scores)))
        seen = p.progress.seen_payloads
        for digest in [d for d, first in seen.items() if first < c - 10]:
            del seen[digest]

    @staticmethod
    def record(c: int, log, result: Score, scores: list[Score]) -> None:
        if result.reason:
            log.rejected[result.miner] = result.reason
            logger.warning("cycle %d: %s scores 0: %s", c, result.miner[:12], result.reason)
        log.scores[result.miner] = result.score
        scores.append(result)

    def candidates(self, cycle: Cycle) -> list[tuple[str, str]]:
        """(miner, payload hash) of every commit seen in time, with the run's proof of work, whose reveal was
        seen in time, matches it and is not a replay."""
        p, log, c = self.peer, cycle.log, cycle.number
        reveals = self.seen.get("reveal", {})
        self.roots = {}
        admitted = None if p.manifest.miners is None else set(p.manifest.miners)
        found = []
        for pid, commit in sorted(self.seen["commit"].items()):
            if admitted is not None and commit.owner not in admitted:
                continue  # the operators admit only listed miners: others are not even logged
            if not meets(commit.record.digest, commit.record.nonce, p.manifest.commit_work_bits):
                log.rejected[pid] = f"commit without the run's proof of work ({p.manifest.commit_work_bits} bits)"
                continue
            reveal = reveals.get(pid)
            if reveal is None:
                log.rejected[pid] = UNREVEALED  # on_reduce tells a late reveal apart, off the evaluate clock
                continue
            digest = reveal.record.payload_hash
            if records.commit_digest(p.run_id, c, pid, digest) != commit.record.digest:
                log.rejected[pid] = "reveal does not match its commit"
                continue
            first = p.progress.seen_payloads.setdefault(digest, c)
            if first < c:
                log.rejected[pid] = f"replayed payload from cycle {first}"
                continue
            found.append((pid, digest))
            self.roots[digest] = reveal.record.pieces
        return found

    def order(self, number: int, seed: bytes, candidates: list[tuple[str, str]],
              announced: dict[str, list[str]]) -> list[tuple[str, str]]:
        """The order submissions are tried in, which no miner chooses: the miners the swarm merged last cycle
        first (a flood of fresh keys cannot crowd out proven ones), then by the combined seed, which nobody
        knew while reveals still counted; a key that announced no address, or one an earlier key in that order
        announced too, goes after every key with an address of its own (a thousand keys behind one listener
        cost one try before the others, and reaching a key with no address costs a DHT lookup in the daemon;
        such a key is not refused, since a key full of strangers' peers records could then hide honest miners).
        Within each of these, the keys this validator holds a connection to come first: an honest miner dials
        every allowlisted validator after its reveal, and a key that never did costs a dial, which to an address
        behind a NAT takes the whole 3 s first-frame deadline (the lab's main job: a flood of such keys ahead
        of them left honest miners unfetched in cycle 0, before any miner was proven). Every validator computes
        nearly the same order (honest miners are connected to all), so the medians compare the same
        submissions."""
        p = self.peer
        proven = set()
        if self.decided[0] == number - 1:  # our own reduce decided it: no DHT read on the evaluate phase's clock
            proven = self.decided[1]
        elif number > 0:  # joined or restarted since
            proven = {m.miner for m in decide(p.get(number - 1, "ranking"), p.manifest).merged}
        by_seed = sorted(candidates, key=lambda pc: (pc[0] not in proven,
                                                     hashlib.sha256(seed + pc[0].encode()).digest()))
        connected = p.net.connected()
        taken, rank = set(), {}
        for i, (pid, _) in enumerate(by_seed):
            places = {endpoint(m) for m in announced.get(pid, [])}
            rank[pid] = (pid not in proven, not places or bool(places & taken), pid not in connected, i)
            taken |= places
        return sorted(by_seed, key=lambda pc: rank[pc[0]])

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

    def ranking(self, scores: list[Score]) -> list[Score]:
        """What this validator publishes: its scores as computed."""
        return scores

    def on_reduce(self, cycle: Cycle) -> None:
        super().on_reduce(cycle)
        log = cycle.log
        unrevealed = [pid for pid, why in log.rejected.items() if why == UNREVEALED]
        if unrevealed:  # for the log only, so never worth more than a moment of the reduce phase: which of
            p = self.peer  # them revealed after all, too late to count (a flood's reveals take seconds to read)
            try:
                revealed, _ = records.get_records_within(p.dht, p.run_id, cycle.number, "reveal", LOG_READ_S)
            except SwarmError:
                revealed = None
            for pid in unrevealed if revealed else []:
                if pid in revealed:
                    log.rejected[pid] = "revealed after the reveal deadline"
        if log.state_hash:
            log.target_loss, log.general_loss = self.peer.measure()
