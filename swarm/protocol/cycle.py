"""The cycle loop: one peer, cycle after cycle, each phase handed to its role by name.

    for phase in PHASES:                    # sync, train, commit, reveal, evaluate, reduce
        wait for the phase (skip it if it is already over)
        role.on_<phase>(cycle)

No peer tells another what phase it is: every peer computes it from the manifest's clock. `Peer` holds
what all roles share (time, signed records, the agreed state, fetching, the per-cycle log); what a miner
or a validator does in each phase is in swarm/roles/, top to bottom.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time as wallclock
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from swarm import VERSION
from swarm.errors import SwarmError, TransferError
from swarm.net import records
from swarm.net.identity import peer_key_of
from swarm.net.records import SignedRecord
from swarm.protocol.clock import PHASES, DHTTime, Timekeeper
from swarm.protocol.consensus import StateVote, agree_on_state, agreed_root, step_bound, why_nothing_merged
from swarm.protocol.cyclelog import Cycle, CycleLog
from swarm.protocol.manifest import run_id as manifest_run_id
from swarm.protocol.metrics import Metrics
from swarm.protocol.runtime import Runtime, report_sets
from swarm.protocol.store import Progress, Store
from teft.errors import TeftError
from teft.outer import checkpoint_bytes, from_checkpoint
from teft.pol import state_loss
from teft.state import ExpertState, check_state

logger = logging.getLogger("swarm.peer")
ADDRESS_WAIT_S = 3.0  # how long a fetch waits for the peers records it has not read yet
PEERS_TTL_S = 30.0  # how long a peer reuses the peers records (addresses, roles) it read for a cycle


class NetworkLike(Protocol):
    """What the loop needs of the P2P side (swarm.net.network.Network, or the tests' in-memory double)."""

    maddrs: list[str]
    stats: object

    def fetch(self, peers: list[str], digest: str, size: int, maddrs: dict[str, list[str]],
              exact: bool, on_failure: Callable[[str, str], None] | None = None) -> bytes: ...

    def fetch_pieces(self, peers: list[str], digest: str, root: str, size: int, maddrs: dict[str, list[str]],
                     partial: Path | None = None, on_failure: Callable[[str, str], None] | None = None
                     ) -> bytes: ...

    def fetch_stream(self, requests: list, budget_s: float, max_parallel: int = 4,
                     timeout: float | None = None, on_data: Callable[[bytes], object] | None = None
                     ) -> Iterator: ...

    def connect(self, peers: dict[str, list[str] | None], timeout: float = 5.0) -> dict[str, str | None]: ...

    def meet(self, peers: dict[str, list[str] | None], timeout: float = 3.0) -> dict[str, str | None]: ...

    def connected(self, timeout: float = 3.0) -> set[str]: ...


def link_busy(stats) -> tuple[float, float]:
    """Seconds the link was moving payload bytes in and out (TransferStats.busy; 0 for a network without it)."""
    busy = getattr(stats, "busy", None)
    return (busy("in"), busy("out")) if busy is not None else (0.0, 0.0)


def rates(log) -> str:
    """' (down X MB/s, up Y MB/s)' for the summary line: measured while bytes moved, so a link's real rate."""
    shown = [f"{way} {rate / 1e6:.2f} MB/s" for way, rate in (("down", log.rate_in), ("up", log.rate_out)) if rate]
    return f" ({', '.join(shown)})" if shown else ""


class Peer:
    """One peer's protocol loop; the role, network and model are handed in ready."""

    def __init__(self, make_role: Callable[[Peer], object], rt: Runtime, identity, dht, net: NetworkLike,
                 store: Store, stop: threading.Event, time: Timekeeper | None = None, metrics: Metrics | None = None):
        self.rt, self.identity, self.dht, self.net, self.store, self.stop = rt, identity, dht, net, store, stop
        self.time = time or DHTTime()
        self.manifest = rt.manifest
        self.run_id = manifest_run_id(self.manifest)
        self.clock = self.manifest.clock()
        self.me = identity.peer_key
        self.cycle = -1  # the cycle whose start state we hold
        self._measured: tuple[str, tuple[float, float | None]] = ("", (0.0, None))  # (checkpoint hash, losses)
        self._peers: dict[int, tuple[float, dict[str, SignedRecord]]] = {}  # cycle -> (read at, records)
        self._pending_peers: dict[int, object] = {}  # cycle -> a peers read still under way (its future)
        self._validator_maddrs: dict[str, list[str]] = {}  # allowlisted validator -> maddrs last announced
        self._meeting: threading.Thread | None = None
        self._met = -1  # the last cycle whose start met the validators
        self.failed_holders: Counter[str] = Counter()  # peer id -> checkpoint fetches it failed: asked last
        self.before_reduce: tuple[int, str] = (-1, "")  # (cycle, hash) of the state our last reduce started from
        self.state: ExpertState = rt.initial_state
        self.momentum: ExpertState = {}
        self.progress = Progress()
        self.role = make_role(self)
        self.metrics = metrics or Metrics(self.role.kind, self.run_id, self.me)

    # -- time -----------------------------------------------------------------------------------
    def now(self) -> float:
        return self.time.now()

    def wait_until(self, t: float) -> bool:
        """Sleep until DHT time t; False if the peer is stopping."""
        return self.time.wait_until(t, self.stop)

    def window(self, cycle: int, phase: str) -> tuple[float, float]:
        return self.clock.phase_start(cycle, phase), self.clock.phase_end(cycle, phase)

    def enter(self, cycle: int, phase: str) -> bool:
        """Wait for a phase to begin and log it; False if stopping or the phase is already over."""
        start, end = self.window(cycle, phase)
        if not self.wait_until(start) or self.now() >= end:
            return False
        self.announce(cycle, phase)
        return True

    def announce(self, cycle: int, phase: str) -> None:
        logger.info("run %s cycle %d phase %s role %s", self.run_id, cycle, phase, self.role.kind)
        self.metrics.set_phase(cycle, phase)

    # -- signed records -------------------------------------------------------------------------
    def put(self, cycle: int, kind: str, value) -> bool:
        """Sign and store one record of ours; expires three cycles later."""
        started = wallclock.monotonic()
        try:
            return records.store_record(self.dht, self.run_id, cycle, kind, value, self.identity,
                                        self.clock.cycle_start(cycle + 3))
        except SwarmError as err:
            logger.warning("could not store %s record for cycle %d: %s", kind, cycle, err)
            return False
        finally:
            self.metrics.observe_dht("store", wallclock.monotonic() - started)

    def get(self, cycle: int, kind: str) -> dict[str, SignedRecord]:
        """Valid records of one kind and cycle, by owner peer id."""
        started = wallclock.monotonic()
        try:
            return records.get_records(self.dht, self.run_id, cycle, kind)
        except SwarmError as err:
            logger.warning("could not read %s records for cycle %d: %s", kind, cycle, err)
            return {}
        finally:
            self.metrics.observe_dht("get", wallclock.monotonic() - started)

    def peer_records(self, cycle: int, wait_s: float | None = None) -> dict[str, SignedRecord]:
        """The peers records of one cycle, read from the DHT at most once per PEERS_TTL_S: every fetch wants
        addresses and every summary counts roles, and each DHT read costs seconds under load. With `wait_s`,
        a read that takes longer is not waited for: what was read before (maybe nothing) is returned."""
        at, found = self._peers.get(cycle, (0.0, None))
        if found is None or wallclock.monotonic() - at >= PEERS_TTL_S:
            if wait_s is None:
                fresh = self.get(cycle, "peers")
            else:
                started, pending = wallclock.monotonic(), self._pending_peers.pop(cycle, None)
                try:  # a read still under way from an earlier call is not waited for again, nor started anew
                    fresh, pending = records.get_records_within(self.dht, self.run_id, cycle, "peers",
                                                                0.0 if pending is not None else wait_s, pending)
                except SwarmError:
                    fresh = None
                self.metrics.observe_dht("get", wallclock.monotonic() - started)
                if fresh is None:
                    if pending is not None:
                        self._pending_peers[cycle] = pending
                    logger.info("cycle %d: the peers records were not read within %gs; going on with %d known",
                                cycle, wait_s, len(found or {}))
                    return found or {}
            found = fresh
            self._peers = {c: v for c, v in self._peers.items() if c >= cycle - 2}
            self._pending_peers = {c: f for c, f in self._pending_peers.items() if c >= cycle - 2}
            self._peers[cycle] = (wallclock.monotonic(), found)
        return found

    def payload_roots(self, cycle: int, wait_s: float = ADDRESS_WAIT_S) -> dict[str, str]:
        """Payload hash -> pieces root, from the miners' signed reveals of one cycle; what a read within `wait_s`
        finds (nothing, if it does not answer in time: those payloads then come whole)."""
        try:
            found, _ = records.get_records_within(self.dht, self.run_id, cycle, "reveal", wait_s)
        except SwarmError:
            found = None
        return {s.record.payload_hash: s.record.pieces for s in (found or {}).values() if s.record.pieces}

    def addresses(self, cycle: int, wait_s: float | None = None) -> dict[str, list[str]]:
        """peer id -> multiaddrs, from this and the previous cycle's peers records (`wait_s`: peer_records)."""
        found: dict[str, list[str]] = {}
        for c in (cycle - 1, cycle):
            if c >= 0:
                for pid, signed in self.peer_records(c, wait_s).items():
                    found[pid] = list(signed.record.maddrs)
        return found

    def validator_addresses(self, cycle: int, wait_s: float = ADDRESS_WAIT_S) -> dict[str, list[str] | None]:
        """Allowlisted validator id -> its last announced maddrs (None: never read), kept across cycles: a read
        that does not finish in time, or a peer whose p2pd forgot them (after a partition), still has them.

        Only the previous cycle's peers records are read: this cycle's are still being written, and a read
        now would be reused (PEERS_TTL_S) where every key's address counts (a validator's evaluate order)."""
        trusted = {peer_key_of(v) for v in self.manifest.validators} - {self.me}
        for pid, signed in (self.peer_records(cycle - 1, wait_s) if cycle >= 1 else {}).items():
            if pid in trusted and signed.record.maddrs:
                self._validator_maddrs[pid] = list(signed.record.maddrs)
        return {v: self._validator_maddrs.get(v) for v in sorted(trusted)}

    def remember(self, maddrs: list[str]) -> None:
        """Keep the addresses of the allowlisted validators among `maddrs` (full /p2p/ addresses: the initial
        peers): a peer whose DHT knows nobody else once its bootstrap node is gone can still meet them."""
        trusted = {peer_key_of(v) for v in self.manifest.validators} - {self.me}
        for maddr in maddrs:
            pid = maddr.rsplit("/p2p/", 1)[-1]
            if pid in trusted:
                self._validator_maddrs.setdefault(pid, []).append(maddr)

    def meet_validators(self, cycle: int) -> None:
        """In the background, connect to the allowlisted validators and ping their DHT nodes: the DHT keeps
        working when the bootstrap node dies, and a validator can open streams to a peer nobody can dial (NAT).
        Never holds up a phase: at most one round at a time, each step bounded."""
        if self._meeting is not None and self._meeting.is_alive():
            return
        known = self.validator_addresses(cycle, wait_s=0.0)  # no wait: what was read before, a read started
        if not known:
            return

        def run() -> None:
            started = wallclock.monotonic()
            try:
                failed = {pid: why for pid, why in self.net.meet(known).items() if why}
            except Exception as err:  # noqa: BLE001 - a background helper: one line, never a traceback
                logger.info("cycle %d: meeting the validators failed: %s", cycle, " ".join(str(err).split())
                            or type(err).__name__)
                return
            logger.info("cycle %d: met %d of %d validators in %.2fs%s", cycle, len(known) - len(failed), len(known),
                        wallclock.monotonic() - started, "; not met: " + "; ".join(
                            f"{pid[:12]}: {why}" for pid, why in sorted(failed.items())) if failed else "")

        self._meeting = threading.Thread(target=run, name="swarm-meet", daemon=True)
        self._meeting.start()

    def fetch(self, digest: str, holders: list[str], cycle: int, max_size: int, exact: bool,
              root: str | None = None) -> bytes:
        """The one fetch path: our own store first, then several holders at once, the allowlisted validators
        first, the rest in a random order (a peer id ground to sort first gains nothing), and holders that
        failed us before last. With the object's pieces root, in pieces from all of them at once, each piece
        checked on arrival and kept in the store's partial file on the way."""
        local = self.store.find(digest)
        if local is not None:
            return local
        trusted = {peer_key_of(v) for v in self.manifest.validators}
        shuffled = [h for h in holders if h != self.me]
        random.shuffle(shuffled)
        ordered = sorted(shuffled, key=lambda h: (h not in trusted, self.failed_holders[h]))

        def failed(holder: str, _reason: str) -> None:
            self.failed_holders[holder] += 1

        if root is not None:
            return self.net.fetch_pieces(ordered, digest, root, max_size, self.addresses(cycle),
                                         partial=self.store.partial_path(digest), on_failure=failed)
        return self.net.fetch(ordered, digest, max_size, self.addresses(cycle), exact=exact, on_failure=failed)

    def fetch_stream(self, wanted: list[tuple[str, list[str]]], cycle: int, size: int, budget_s: float,
                     max_parallel: int = 8, timeout: float | None = None, relay_wait_s: float = 0.0,
                     keep: bool = False, roots: Mapping[str, str | None] | None = None, spread: int = 0
                     ) -> Iterator[tuple[int, bytes | None, str | None]]:
        """(i, bytes, None) or (i, None, why) for each wanted[i] = (hash, holders tried in turn), as each
        arrives: what our store holds first, then the network's in the order they finish. Fetching starts
        now, in parallel, within `budget_s`; one holder may take `timeout` at most (default a quarter of the
        budget), so a few stalling peers cannot use all of it. With `relay_wait_s`, the first of several
        holders is a relay still fetching the payload: it is asked again for that long before the others.
        With `keep`, each payload is stored the moment it arrives, so this peer serves it to others at once
        (a validator relays what it carries), however long the caller takes to come to it. A payload whose
        pieces root `roots` gives, and of more than one piece, comes in pieces from `spread` of its holders at
        once (0: all), the others standing by."""
        from swarm.net.fetchmany import FetchRequest

        local, requests, position = [], [], {}
        for i, (digest, holders) in enumerate(wanted):
            data = self.store.find(digest)
            if data is not None:
                local.append((i, data, None))
                continue
            requests.append(FetchRequest(digest, size, [h for h in holders if h != self.me], exact=True,
                                         relay_wait_s=relay_wait_s, root=(roots or {}).get(digest), spread=spread))
            position[id(requests[-1])] = i
        if requests:  # a DHT read costs seconds under load: none when our store holds everything
            # addresses help p2pd dial, but it knows most peers already (DHT traffic): wait little for them; a
            # read of a key every peer reads at once took 50 s in the main job under load
            maddrs = self.addresses(cycle, wait_s=ADDRESS_WAIT_S)
            for request in requests:
                request.maddrs = maddrs
        stream = self.net.fetch_stream(requests, budget_s, max_parallel, timeout=timeout or max(budget_s / 4, 1.0),
                                       on_data=self.store.save_payload if keep else None) if requests else None

        def arrivals():
            yield from local
            if stream is not None:
                with contextlib.closing(stream):
                    for result in stream:
                        yield position[id(result.request)], result.data, result.error
        return arrivals()

    # -- the agreed state -----------------------------------------------------------------------
    def adopt(self, cycle: int, data: bytes) -> None:
        """Hold this outer checkpoint as the start of `cycle`, checked first, and persist it atomically."""
        state, momentum = from_checkpoint(data)
        reason = check_state(state, self.rt.layout, self.rt.expert_map)
        if reason is None and momentum:
            reason = check_state(momentum, self.rt.layout, self.rt.expert_map)
        if reason is not None:
            raise TeftError(f"checkpoint does not fit this run's expert map: {reason}")
        self.state, self.momentum, self.cycle = state, momentum, cycle
        digest = self.store.save_checkpoint(cycle, data)
        self.progress.cycle, self.progress.checkpoint_hash = cycle, digest
        self.store.save_progress(self.progress)
        self.store.prune(cycle)

    def resume(self) -> None:
        """Pick up the stored checkpoint, or start from Phi_0."""
        progress = self.store.load_progress()
        if progress is not None:
            data = self.store.load_checkpoint(progress.cycle, progress.checkpoint_hash)
            if data is not None:
                self.progress = progress
                self.adopt(progress.cycle, data)
                logger.info("resumed at cycle %d with state %s", self.cycle, progress.checkpoint_hash[:12])
                return
            logger.warning("stored checkpoint of cycle %d is missing or corrupted; resyncing", progress.cycle)
        self.progress = progress or Progress()
        self.adopt(0, checkpoint_bytes(self.rt.initial_state, None))
        logger.info("starting from Phi_0 (%s)", self.progress.checkpoint_hash[:12])

    def state_vote(self, cycle: int) -> tuple[StateVote, list[str], str | None]:
        """What the allowlisted validators say Phi_{cycle+1} is (consensus.agree_on_state: a strict quorum,
        no tie-break), every peer that holds the agreed hash, and its checkpoint's pieces root when a quorum of
        the validators that agreed published the same one (else None: it is then fetched whole).

        Only the allowlist votes: any number of throwaway keys can publish a state hash, so counting them
        would let a Sybil flood choose what honest peers download. Holders may be anyone: bytes are
        checked against the hash, and the checkpoint against the expert map and the step bound, before use.
        """
        recs = self.get(cycle, "state")
        vote = agree_on_state(recs, self.manifest.validators, self.manifest.quorum)
        holders = sorted(pid for pid, s in recs.items() if vote.agreed and s.record.state_hash == vote.agreed)
        return vote, holders, agreed_root(recs, self.manifest.validators, vote.agreed, self.manifest.quorum)

    def within_reach(self, cycle: int, data: bytes) -> str | None:
        """Why a checkpoint for `cycle` cannot have come from this run's reduce, starting from the state we
        hold: further from it than the outer steps in between can move Phi with every merged delta within
        the manifest's norm bound, or a momentum larger than such deltas can build. None if it can."""
        try:
            state, momentum = from_checkpoint(data)
        except TeftError as err:
            return str(err)
        reason = check_state(state, self.rt.layout, self.rt.expert_map)
        if reason is not None:
            return reason
        steps = max(cycle - self.cycle, 0) + 1  # a peer that disagrees at the same cycle is one step off at most
        move, buffer = step_bound(self.rt.outer, self.manifest.max_delta_norm, steps)
        moved = sum(float((state[k].double() - self.state[k].double()).pow(2).sum()) for k in state) ** 0.5
        if moved > move:
            return f"it moves Phi by {moved:.4g}, over the {move:.4g} that {steps} outer step(s) can"
        size = sum(float(v.double().pow(2).sum()) for v in momentum.values()) ** 0.5
        if size > buffer:
            return f"its momentum norm {size:.4g} is over the {buffer:.4g} bounded deltas can build"
        return None

    def sync_to(self, cycle: int) -> bool:
        """Hold the agreed Phi_cycle: keep ours if it matches the quorum, else download it by hash.

        When no allowlisted validator published a state for the previous cycle by the end of this cycle's
        sync phase, nothing was merged anywhere: Phi carries forward unchanged (what an empty reduce
        computes), so a swarm whose peers all missed a cycle goes on instead of waiting forever. When some
        published but no strict quorum agrees by the end of the sync phase (a tie, or too few), every peer
        carries the previous cycle's state forward, its own reduce result set aside: honest peers that read
        different rankings, or a tie an attacker made, then still agree, on the state they last agreed on.
        """
        if cycle == 0:
            return self.cycle == 0
        vote, holders, root = self.state_vote(cycle - 1)
        end = self.clock.phase_end(cycle, "sync")
        # votes may still be arriving, or not be readable yet (a peer back from a partition meets the validators
        # in the background meanwhile): unless the silent validators can no longer change it, decide late in
        # sync. Trusting our own reduce on seeing no vote at once kept a peer that had been cut off a whole cycle
        # on its own state (network lab); adopting a quorum the silent ones could still tie splits honest peers
        while not vote.settled and self.now() < end - 0.5 and not self.stop.is_set():
            self.wait_until(min(self.now() + 1.0, end - 0.5))
            vote, holders, root = self.state_vote(cycle - 1)
        digest = vote.agreed
        if digest is None and vote.votes:
            counts = ", ".join(f"{h[:12]} x{n}" for h, n in Counter(vote.votes.values()).most_common())
            base = self.before_reduce if self.cycle == cycle else (self.cycle, self.progress.checkpoint_hash)
            data = self.store.load_checkpoint(*base) if base[0] == cycle - 1 else None
            if data is None:
                logger.warning("no quorum of allowlisted validators on the state of cycle %d (%s; quorum %d), and "
                               "cycle %d's state is not at hand: waiting for a cycle that has one", cycle - 1,
                               counts, self.manifest.quorum, cycle - 1)
                return False
            logger.warning("no quorum of allowlisted validators on the state of cycle %d (%s; quorum %d): carrying "
                           "cycle %d's agreed state forward, as every honest peer does", cycle - 1, counts,
                           self.manifest.quorum, cycle - 1)
            self.adopt(cycle, data)
            return True
        if digest is None:
            if self.cycle < cycle and self.now() >= self.clock.phase_end(cycle, "sync"):
                data = self.store.load_checkpoint(self.cycle, self.progress.checkpoint_hash)
                if data is not None:
                    logger.info("no agreed state for cycle %d; carrying cycle %d's forward", cycle, self.cycle)
                    self.adopt(cycle, data)
            return self.cycle == cycle
        if self.cycle == cycle and digest == self.progress.checkpoint_hash:
            return True
        why = f"behind (we hold cycle {self.cycle})" if self.cycle != cycle else "disagrees with the quorum"
        logger.warning("state for cycle %d %s; fetching %s from %d peer(s)", cycle, why, digest[:12], len(holders))
        try:
            data = self.fetch(digest, holders, cycle, self.rt.checkpoint_limit, exact=False, root=root)
            reason = self.within_reach(cycle, data)
            if reason is not None:
                raise TeftError(f"refusing the checkpoint: {reason}")
            self.adopt(cycle, data)
        except (TransferError, TeftError) as err:
            logger.warning("could not adopt the agreed state %s: %s", digest[:12], err)
            return False
        return True

    def measure(self) -> tuple[float, float | None]:
        """Target and general loss of the held state on the report blocks (the test split, which no miner
        trains on: runtime.report_sets); a state carried forward unchanged is not measured again."""
        if self._measured[0] != self.progress.checkpoint_hash:
            rt = self.rt
            target_batches, general_batches = report_sets(rt)
            target = state_loss(rt.model, rt.layout, self.state, target_batches)
            general = state_loss(rt.model, rt.layout, self.state, general_batches) if general_batches else None
            self._measured = (self.progress.checkpoint_hash, (target, general))
        return self._measured[1]

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        self.resume()
        while not self.stop.is_set():
            pos = self.clock.where(self.now())
            if pos.cycle < 0:  # announce ourselves for cycle 0 already, so `swarm.status` shows who waits
                self.put(0, "peers", records.PeerRecord(role=self.role.kind, version=VERSION,
                                                        maddrs=records.announceable(self.net.maddrs)))
                logger.info("waiting %.0fs for genesis", self.clock.genesis - self.now())
                self.wait_until(self.clock.genesis)
                continue
            if self.cycle > pos.cycle:  # restarted after this cycle's reduce: we already hold what comes next
                logger.info("holding the state of cycle %d already; waiting for it to begin", self.cycle)
                self.wait_until(self.clock.cycle_start(self.cycle))
                continue
            if self._met < pos.cycle:  # before the state check: a peer back from a partition needs its DHT first
                self._met = pos.cycle
                self.meet_validators(pos.cycle)
            if not self.sync_to(pos.cycle):
                if pos.phase == "sync" and self.cycle < pos.cycle:
                    self.wait_until(min(self.now() + 1.0, self.clock.phase_end(pos.cycle, "sync")))
                    continue  # the agreed hash may not be readable yet
                logger.info("not in sync for cycle %d; waiting for the next cycle", pos.cycle)
                self.wait_until(self.clock.cycle_start(pos.cycle + 1))
                continue
            self.run_cycle(pos.cycle, joined_in=pos.phase)

    def run_cycle(self, number: int, joined_in: str) -> None:
        """Every phase of one cycle, in order, handed to the role; a phase already over is skipped."""
        stats = self.net.stats
        before = (stats.bytes_in, stats.bytes_out, *link_busy(stats))
        log = CycleLog(number, self.role.kind, self.me, getattr(self.role, "variant", None))
        cycle = Cycle(number, fresh=joined_in in ("sync", "train"), log=log)
        self.announce(number, joined_in)
        for phase in PHASES:
            if self.stop.is_set():
                break
            if phase == "sync" or self.enter(number, phase) or (phase == "reduce" and self.cycle == number):
                started, cpu = wallclock.monotonic(), wallclock.process_time()
                try:
                    getattr(self.role, f"on_{phase}")(cycle)
                except (TeftError, TransferError, SwarmError) as err:  # bad input from the network: one line
                    logger.warning("cycle %d phase %s: %s", number, phase, err)
                    log.note += f"{phase}: {err}; "
                log.phase_seconds[phase] = round(wallclock.monotonic() - started, 3)
                log.phase_cpu[phase] = round(wallclock.process_time() - cpu, 3)
        log.bytes_in = stats.bytes_in - before[0]
        log.bytes_out = stats.bytes_out - before[1]
        busy_in, busy_out = link_busy(stats)
        log.rate_in = round(log.bytes_in / (busy_in - before[2])) if busy_in - before[2] > 0.01 else None
        log.rate_out = round(log.bytes_out / (busy_out - before[3])) if busy_out - before[3] > 0.01 else None
        if self.stop.is_set() and self.cycle <= number:  # stopped before this cycle's reduce: nothing to report
            logger.info("stopped in cycle %d before its reduce; no summary for it", number)
            return
        self.finish(cycle)
        self.wait_until(self.clock.cycle_start(number + 1))

    def finish(self, cycle: Cycle) -> None:
        """Write the cycle's line to metrics.jsonl, its summary to the log, and its numbers to the metrics."""
        lo = cycle.log
        vote, _, _ = self.state_vote(cycle.number)
        lo.agreed_hash = vote.agreed or ""
        lo.state_votes = {peer_key_of(v): h for v, h in sorted(vote.votes.items())}
        lo.state_dissent = [peer_key_of(v) for v in vote.dissent]
        lo.state_silent = [peer_key_of(v) for v in vote.silent]
        if vote.agreed is None and vote.votes:
            lo.note += (f"no quorum on the state ({len(vote.votes)} allowlisted vote(s), no hash with "
                        f"{self.manifest.quorum} and more than any other); ")
        if not lo.merged:
            lo.note += f"nothing merged: {why_nothing_merged(lo, self.manifest)}; "
        roles = Counter(s.record.role for s in self.peer_records(cycle.number, wait_s=ADDRESS_WAIT_S).values())
        start, end = self.window(cycle.number, "evaluate")
        self.metrics.record_cycle(lo, dict(roles), end - start)
        with open(self.store.root / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(asdict(lo), default=str) + "\n")
        logger.info("cycle %d summary: role %s%s, submitted %s, scores %s, merged %d (%s), state %s, "
                    "bytes in %d out %d%s%s", cycle.number, lo.role, f" ({lo.variant})" if lo.variant else "",
                    (lo.submitted or "-")[:12], {k[:8]: round(v, 4) for k, v in lo.scores.items()},
                    len(lo.merged), ",".join(m[:8] for m in lo.merged), lo.state_hash[:12],
                    lo.bytes_in, lo.bytes_out, rates(lo), f", {lo.note}" if lo.note else "")
