"""Liveness attacks on the payload path: a miner that never sends what it revealed, and a slowloris.

slow-server trains, commits and reveals honestly, then stalls every request for its own payload far past
any fetch timeout: a validator that fetched one payload at a time, or waited out the phase on it, would
score nobody. slowloris opens hundreds of streams to every validator's payload server through evaluate
and reduce and never sends a request: a server that gave a slot to a stream before its request arrived
would serve nobody else. The defences are the validators' fetch budget and the server's header deadline
and per-peer cap (swarm.net.transfer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress

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
