"""Catching up past holders that stall: a late joiner asks two holders of the agreed checkpoint at once, and
drops one that sends nothing for a few seconds.

The stallers are raw libp2p peers of the test's own that answer a request with a header and then nothing,
under peer ids listed before the honest holder; tried in turn, each cost a whole fetch timeout.
"""

from __future__ import annotations

import asyncio
import os
import time

import msgpack
import pytest
from hivemind.p2p import P2P

from swarm.net.server import PayloadServer
from swarm.net.transfer import STALL_S, fetch_first
from swarm.net.wire import FRAME_HEAD, HDR, payload_hash, protocol_name, request_length, send_frame

RUN = "feedfacecafebeef"
STALLERS = 4
TIMEOUT = 30.0
pytestmark = pytest.mark.timeout(240)


async def _stall(size: int, _info, reader, writer) -> None:
    """Read a request, announce the full size, then send nothing until the asker gives up."""
    await reader.readexactly(request_length(await reader.readexactly(FRAME_HEAD)))
    await send_frame(writer, HDR, msgpack.packb({"size": size}))
    try:
        await asyncio.sleep(3600)
    finally:
        writer.close()


async def _holders(payload: bytes):
    """An honest holder of `payload`, STALLERS stalling ones, and a joiner: (every peer, joiner, holder ids with
    the stallers first, their addresses)."""
    honest = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    maddrs = [str(m) for m in await honest.get_visible_maddrs()]
    stallers = [await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=maddrs)
                for _ in range(STALLERS)]
    joiner = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=maddrs)
    await PayloadServer(honest, {payload_hash(payload): payload}.get, RUN).start()
    for staller in stallers:
        await staller.add_binary_stream_handler(protocol_name(RUN), lambda *a: _stall(len(payload), *a))
    holders = [s.peer_id.to_base58() for s in stallers] + [honest.peer_id.to_base58()]
    where = {p.peer_id.to_base58(): [str(m).split("/p2p/")[0] for m in await p.get_visible_maddrs()]
             for p in [*stallers, honest]}
    return [joiner, *stallers, honest], joiner, holders, where


def test_stalling_holders_cost_a_late_joiner_no_turns():
    payload = os.urandom(1 << 20)
    digest = payload_hash(payload)

    async def main():
        peers, joiner, holders, where = await _holders(payload)
        try:
            failed = {}
            start = time.perf_counter()
            got = await fetch_first(joiner, holders, digest, len(payload), TIMEOUT, run_id=RUN, max_parallel=2,
                                    maddrs=where, on_failure=lambda peer, why: failed.setdefault(peer, why))
            elapsed = time.perf_counter() - start
            assert got == payload
            # two at a time, each staller dropped STALL_S after its header: tried in turn with only the whole
            # fetch's timeout, STALLERS x TIMEOUT = 120 s
            assert elapsed < STALLERS / 2 * STALL_S + 5.0, elapsed
            assert set(failed) == set(holders[:STALLERS]), failed  # ranked last next time
            # each staller was dropped for stalling, except that the last one may still have been inside its
            # STALL_S when the honest holder, started in the slot the one before it freed, finished first
            stalled = [why for why in failed.values() if "stalled" in why]
            assert len(stalled) >= STALLERS - 1, failed
            assert all(why in stalled or why == "slower than another holder" for why in failed.values()), failed
            print(f"\ncheckpoint fetched past {STALLERS} stalling holders in {elapsed:.2f}s")
        finally:
            for p in peers:
                await p.shutdown()

    asyncio.run(main())


def test_stalling_holders_cost_a_pieced_catch_up_a_range_each():
    """The same stallers against the pieced fetch a peer uses once the validators pinned a pieces root: they
    cost the manifest two at a time, then every holder is asked for ranges at once and a staller's range goes to
    the honest holder after STALL_S."""
    from swarm.net.multisource import fetch_pieces
    from swarm.net.pieces import pieces_root

    payload = os.urandom(3 << 20)
    digest, root = payload_hash(payload), pieces_root(payload)

    async def main():
        peers, joiner, holders, where = await _holders(payload)
        try:
            failed = {}
            start = time.perf_counter()
            got = await fetch_pieces(joiner, holders, digest, root, len(payload), TIMEOUT, run_id=RUN, maddrs=where,
                                     on_failure=lambda peer, why: failed.setdefault(peer, why))
            elapsed = time.perf_counter() - start
            assert got == payload
            assert elapsed < STALLERS / 2 * STALL_S + 5.0, elapsed  # the manifest, two at a time; ranges: at once
            assert set(failed) <= set(holders[:STALLERS]) and failed, failed
            print(f"\ncheckpoint fetched in pieces past {STALLERS} stalling holders in {elapsed:.2f}s")
        finally:
            for p in peers:
                await p.shutdown()

    asyncio.run(main())
