"""Liveness attacks on the payload path: a miner that never sends what it revealed, and a slowloris.

slow-server trains, commits and reveals honestly, then stalls every request for its own payload far past
any fetch timeout: a validator that fetched one payload at a time, or waited out the phase on it, would
score nobody. slowloris opens hundreds of streams to every validator's payload server through evaluate
and reduce and never sends a request: a server that gave a slot to a stream before its request arrived
would serve nobody else. The defences are the validators' fetch budget and the server's header deadline
and per-peer cap (swarm.net.transfer).

slow-reader asks every miner, from several throwaway libp2p identities (keys are free), for the payloads
the cycle's reveal records name, reads every byte and never ACKs, holding each stream until the server
drops it, then asks again: a server whose slots were held until the ACK deadline, and whose limits were
all per key, served it instead of the validators. The defences are the server's priority lanes for
validators, its per-address caps, read-rate and ACK deadlines, and per-reader byte budgets
(swarm.net.server).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
from contextlib import suppress
from dataclasses import dataclass

from swarm.net.identity import peer_key_of
from swarm.protocol.cyclelog import Cycle
from swarm.roles.miner import Miner
from swarm.sim.adversaries.payload import Untrained

logger = logging.getLogger("swarm.peer")

STALL_S = 600.0  # far past any fetch timeout; a stalled lookup ends early only when the peer stops
IDLE_STREAMS = 200  # per validator, per round
ROUND_S = 2.0  # a new round of idle streams this often: the server's header deadline ends the last one


class SlowServer(Untrained):
    """Commits and reveals a payload, then serves it so slowly that it never arrives (so it need not train)."""

    def __init__(self, peer):
        super().__init__(peer)
        self.own: set[str] = set()
        holder = getattr(peer.net, "server", peer.net)  # the real payload server, or the tests' network double
        honest = holder.lookup

        def lookup(digest: str) -> bytes | None:
            if digest in self.own:  # the payload server runs this in an executor thread: only that thread waits
                peer.stop.wait(STALL_S)
            return honest(digest)

        holder.lookup = lookup

    def on_train(self, cycle: Cycle) -> None:
        super().on_train(cycle)
        if self.payload:
            self.own.add(self.payload[0])


async def _idle_round(p2p, targets: dict[str, list[str]], name: str, n: int) -> list:
    """n streams to each target's payload protocol that never send a byte; the writers, to close later."""
    from hivemind.p2p import PeerID

    from swarm.net.transfer import _connect

    async def one(pid: str):
        return (await p2p.call_binary_stream_handler(PeerID.from_base58(pid), name))[2]

    for pid, maddrs in targets.items():
        with suppress(Exception):
            await _connect(p2p, PeerID.from_base58(pid), maddrs)
    opened = await asyncio.gather(*(one(pid) for pid in targets for _ in range(n)), return_exceptions=True)
    return [w for w in opened if not isinstance(w, BaseException)]


async def hold_idle_streams(p2p, targets: dict[str, list[str]], name: str, until: float, n: int = IDLE_STREAMS,
                            now=time.time) -> int:
    """Round after round of idle streams until `until` (wall time); how many streams were opened in all."""
    opened = 0
    while now() < until:
        writers = await _idle_round(p2p, targets, name, n)
        opened += len(writers)
        await asyncio.sleep(max(min(ROUND_S, until - now()), 0.0))
        for w in writers:
            w.close()
    return opened


class Slowloris(Miner):
    """Trains nothing; from evaluate to the end of reduce, holds idle streams to every validator's server."""

    def on_train(self, cycle: Cycle) -> None:
        pass

    def on_evaluate(self, cycle: Cycle) -> None:
        p = self.peer
        p2p, loop = getattr(p.net, "p2p", None), getattr(p.net, "loop", None)
        if p2p is None or loop is None:
            cycle.log.note += "no libp2p daemon to open streams on (in-memory network); "
            return
        from swarm.net.wire import protocol_name

        addresses = p.addresses(cycle.number)
        targets = {peer_key_of(v): addresses.get(peer_key_of(v), []) for v in p.manifest.validators}
        until = time.time() + (p.clock.phase_end(cycle.number, "reduce") - p.now())
        job = asyncio.run_coroutine_threadsafe(hold_idle_streams(p2p, targets, protocol_name(p.run_id), until),
                                               loop.loop)
        job.add_done_callback(lambda f: logger.info("slowloris: %s idle streams opened in cycle %d",
                                                    "cancelled" if f.cancelled() else f.exception() or f.result(),
                                                    cycle.number))


SLOW_READER_KEYS = 6  # throwaway libp2p identities, one p2pd each
SLOW_READER_STREAMS = 4  # streams per identity and target at once: the per-peer cap of an honest server
SLOW_READER_HOLD_S = 30.0  # a read stream is held un-ACKed this long at most; the server closes it first
_REFUSED_PAUSE_S = 0.1  # after an ERR, before the next stream: a refusal costs the server little, but not zero


@dataclass
class ReadTally:
    """What a slow-reader run took from the servers."""

    opened: int = 0  # streams opened
    payloads: int = 0  # payloads read to END and never ACKed
    bytes_in: int = 0  # payload bytes read
    refused: int = 0  # streams the server answered with ERR
    failed: int = 0  # streams that broke another way (closed, timed out, could not open)


async def read_once(p2p, peer_id, name: str, digest: str, size: int, hold_s: float, tally: ReadTally) -> bool:
    """One stream that asks for a payload properly, reads every byte, and never ACKs: held open until the server
    closes it or `hold_s` passes (0: closed at once, to ask again sooner). False if the server refused."""
    from swarm.net.wire import CHUNK, DATA, END, ERR, REQ, encode_request, read_head, send_frame

    _, reader, writer = await asyncio.wait_for(p2p.call_binary_stream_handler(peer_id, name), 5.0)
    tally.opened += 1
    try:
        await send_frame(writer, REQ, encode_request(digest, size), timeout=5.0)
        while True:
            kind, length = await asyncio.wait_for(read_head(reader), 10.0)
            if length > CHUNK + 64:
                raise ConnectionError(f"frame of {length} bytes: not this wire format")
            await reader.readexactly(length)
            if kind == DATA:
                tally.bytes_in += length
            elif kind == ERR:
                tally.refused += 1
                return False
            elif kind == END:
                tally.payloads += 1
                break
        if hold_s > 0:  # no ACK: sit on the stream until the server gives up (EOF) or we do
            with suppress(Exception):
                await asyncio.wait_for(reader.read(1), hold_s)
        return True
    finally:
        writer.close()


async def read_without_ack(p2ps: list, targets: dict[str, list[str]], wanted: dict[str, list[tuple[str, int]]],
                           name: str, until: float, streams: int = SLOW_READER_STREAMS,
                           hold_s: float = SLOW_READER_HOLD_S, now=time.time, tally: ReadTally | None = None
                           ) -> ReadTally:
    """From each identity in `p2ps`, `streams` streams at once to each target (peer id -> maddrs), each asking
    in turn for the (hash, size) payloads `wanted[target]` names, reading them and never ACKing, reopened until
    `until` (wall time). What was taken, in all (also kept in `tally` as it goes, when given)."""
    from hivemind.p2p import PeerID

    from swarm.net.transfer import _connect

    tally = tally if tally is not None else ReadTally()

    async def lane(p2p, pid: str, offset: int) -> None:
        peer_id, payloads, i = PeerID.from_base58(pid), wanted[pid], offset
        while now() < until:
            digest, size = payloads[i % len(payloads)]
            i += 1
            try:
                if not await read_once(p2p, peer_id, name, digest, size, hold_s, tally):
                    await asyncio.sleep(_REFUSED_PAUSE_S)
            except Exception:  # noqa: BLE001 - a closed or refused stream: ask again
                tally.failed += 1
                await asyncio.sleep(_REFUSED_PAUSE_S)

    targets = {pid: maddrs for pid, maddrs in targets.items() if wanted.get(pid)}
    for p2p in p2ps:
        for pid, maddrs in targets.items():
            with suppress(Exception):
                await _connect(p2p, PeerID.from_base58(pid), maddrs)
    lanes = [asyncio.create_task(lane(p2p, pid, k)) for p2p in p2ps for pid in targets for k in range(streams)]
    try:
        await asyncio.wait(lanes, timeout=max(until - now(), 0.0) + 1.0)
    finally:
        for task in lanes:
            task.cancel()
        if lanes:
            await asyncio.wait(lanes, timeout=5.0)
    return tally


class SlowReader(Miner):
    """Trains nothing; from the moment the cycle's reveals appear to the end of reduce, reads every revealed
    payload from every miner under throwaway libp2p identities, never ACKing (read_without_ack), so the
    streams are held while the validators fetch in evaluate."""

    def __init__(self, peer):
        super().__init__(peer)
        self.p2ps: list = []
        self.attacking: int | None = None  # the cycle whose attack is running

    def on_train(self, cycle: Cycle) -> None:
        loop = getattr(self.peer.net, "loop", None)
        if getattr(self.peer.net, "p2p", None) is not None and loop is not None:
            with suppress(Exception):  # made now, so the attack starts the moment reveals appear
                self.identities(loop)

    def identities(self, loop) -> list:
        """SLOW_READER_KEYS throwaway P2P daemons on the peer's loop, made once (each a fresh key)."""
        if not self.p2ps:
            from hivemind.p2p import P2P

            async def make():
                return [await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"]) for _ in range(SLOW_READER_KEYS)]

            self.p2ps = asyncio.run_coroutine_threadsafe(make(), loop.loop).result(120)
            for p2p in self.p2ps:
                atexit.register(p2p._terminate)  # their p2pd children must not outlive this process
        return self.p2ps

    def on_reveal(self, cycle: Cycle) -> None:
        p = self.peer
        end = p.clock.phase_end(cycle.number, "reveal")
        while not p.stop.is_set() and self.attacking != cycle.number and p.now() < end:
            p.wait_until(min(p.now() + 1.0, end))  # the miners reveal at the start of the phase
            self.attack(cycle, quiet=True)

    def on_evaluate(self, cycle: Cycle) -> None:
        if self.attacking != cycle.number:
            self.attack(cycle, quiet=False)

    def attack(self, cycle: Cycle, quiet: bool) -> None:
        """Start reading what this cycle's reveals name, until the end of reduce (once per cycle)."""
        p = self.peer
        loop = getattr(p.net, "loop", None)
        if getattr(p.net, "p2p", None) is None or loop is None:
            if not quiet:
                cycle.log.note += "no libp2p daemon to open streams on (in-memory network); "
            self.attacking = cycle.number
            return
        from swarm.net.wire import protocol_name

        wanted: dict[str, list[tuple[str, int]]] = {}
        for pid, signed in p.get(cycle.number, "reveal").items():
            if pid != p.me:
                wanted.setdefault(pid, []).append((signed.record.payload_hash, signed.record.size))
        if not wanted:
            if not quiet:
                cycle.log.note += "no reveals to read; "
            return
        addresses = p.addresses(cycle.number)
        targets = {pid: addresses.get(pid, []) for pid in wanted}
        try:
            p2ps = self.identities(loop)
        except Exception as err:  # noqa: BLE001 - no daemons, no attack: say so in the log
            cycle.log.note += f"could not start throwaway identities ({type(err).__name__}); "
            self.attacking = cycle.number
            return
        self.attacking = cycle.number
        until = time.time() + (p.clock.phase_end(cycle.number, "reduce") - p.now())
        job = asyncio.run_coroutine_threadsafe(
            read_without_ack(p2ps, targets, wanted, protocol_name(p.run_id), until), loop.loop)
        job.add_done_callback(lambda f: logger.info("slow-reader: %s in cycle %d",
                                                    "cancelled" if f.cancelled() else f.exception() or f.result(),
                                                    cycle.number))
