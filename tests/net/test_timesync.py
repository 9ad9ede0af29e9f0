"""The clock check: real libp2p peers answer for their time, a skewed clock is measured and refused."""

from __future__ import annotations

import asyncio
import time

import pytest
from hivemind.p2p import P2P
from hivemind.p2p.p2p_daemon_bindings.utils import P2PDaemonError

from swarm.errors import SwarmError
from swarm.net.timesync import ClockSample, TimeServer, ask_time, clock_verdict, sample_clocks


def test_a_peer_reports_the_offset_of_each_clock_it_asks():
    async def main():
        honest = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        ahead = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        silent = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])  # serves no clock at all
        me = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        try:
            await TimeServer(honest).start()
            await TimeServer(ahead, now=lambda: time.time() + 30.0).start()
            where = {p.peer_id.to_base58(): [str(m) for m in await p.get_visible_maddrs()]
                     for p in (honest, ahead, silent)}
            started = time.monotonic()
            samples = {s.peer: s for s in await sample_clocks(me, where, timeout=2.0)}
            assert time.monotonic() - started < 6  # the silent peer costs its timeout, once, in parallel
            assert set(samples) == {honest.peer_id.to_base58(), ahead.peer_id.to_base58()}
            assert abs(samples[honest.peer_id.to_base58()].offset) < 0.5
            assert abs(samples[ahead.peer_id.to_base58()].offset - 30.0) < 0.5
            assert all(0 <= s.rtt < 2.0 for s in samples.values())
            with pytest.raises(P2PDaemonError, match="not supported"):
                await ask_time(me, silent.peer_id.to_base58(), where[silent.peer_id.to_base58()], 1.0)
        finally:
            for p in (honest, ahead, silent, me):
                await p.shutdown()

    asyncio.run(main())


def _samples(*offsets: float, rtt: float = 0.01) -> list[ClockSample]:
    return [ClockSample(f"p{i}", o, rtt) for i, o in enumerate(offsets)]


def test_the_median_of_trusted_peers_decides_and_names_the_fix():
    assert clock_verdict(_samples(0.1, -0.2, 0.05), 1.0) == (0.05, None)
    offset, why = clock_verdict(_samples(12.0, 12.2, 0.0), 1.0)  # two of three say we are 12 s behind
    assert offset == 12.0 and why.startswith("this machine's clock is 12.0s behind the swarm's (median of 3")
    assert "NTP" in why and "\n" not in why
    assert "ahead of" in clock_verdict(_samples(-5.0), 1.0)[1]
    # an answer whose round trip alone is longer than the tolerance allows cannot tell: left out
    assert clock_verdict(_samples(30.0, rtt=5.0), 1.0) == (None, None)
    assert clock_verdict([], 1.0) == (None, None)


def test_a_peer_with_a_skewed_clock_refuses_to_start(make_identity, tmp_path):
    """swarm.peer's check against its initial peer: a bootstrap node whose clock runs 20 s ahead of ours
    (as ours would be 20 s behind) stops the peer with one line before any model is loaded."""
    from swarm.launch import write_manifest
    from swarm.net.dht import start_dht, visible_maddrs
    from swarm.net.network import Network
    from swarm.net.transfer import BackgroundLoop
    from swarm.peer import check_clock
    from swarm.protocol.manifest import load

    manifest = load(write_manifest("configs/tiny.yaml", tmp_path / "run" / "run.yaml",
                                   [make_identity("v").public_key_str], time.time() + 60, {"quorum": 1}))
    boot = start_dht(make_identity("boot"))
    loop = BackgroundLoop()
    boot_p2p = loop.run(boot.replicate_p2p(), timeout=30)
    server = loop.run(TimeServer(boot_p2p, now=lambda: time.time() + 20.0).start(), timeout=30)
    me = make_identity("me")
    dht = start_dht(me, initial_peers=visible_maddrs(boot))
    net = Network(dht, "run", lambda _: None, timeout=5.0)
    try:
        with pytest.raises(SwarmError, match=r"clock is 20\.\ds behind the swarm's \(median of 1 trusted"):
            check_clock(net, dht, manifest, "run", visible_maddrs(boot)[:1], me.peer_key)
        loop.run(server.stop(), timeout=5)
        loop.run(TimeServer(boot_p2p).start(), timeout=30)  # the same peer with a right clock: no complaint
        check_clock(net, dht, manifest, "run", visible_maddrs(boot)[:1], me.peer_key)
    finally:
        net.close()
        dht.shutdown()
        loop.run(boot_p2p.shutdown(), timeout=5)
        loop.close()
        boot.shutdown()


def test_an_outsider_cannot_stall_or_poison_the_clock_check():
    """Hundreds of streams that never read, a peer that answers garbage and one that never answers: an honest
    asker still gets the honest clock, within its timeout, and the bad answers are simply left out."""

    async def garbage(_info, _reader, writer):
        writer.write(b"\x7f\xf8\x00\x00")  # half a NaN
        await writer.drain()
        writer.close()

    async def stall(_info, reader, _writer):
        await reader.read(1)  # never answers; the asker's timeout ends it

    async def main():
        honest = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        liar = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        slow = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        outsider = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                                    initial_peers=await honest.get_visible_maddrs())
        me = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        idle = []
        try:
            await TimeServer(honest).start()
            await liar.add_binary_stream_handler("/teft/time/1", garbage)
            await slow.add_binary_stream_handler("/teft/time/1", stall)
            where = {p.peer_id.to_base58(): [str(m) for m in await p.get_visible_maddrs()]
                     for p in (honest, liar, slow)}
            for _ in range(200):
                idle.append(await outsider.call_binary_stream_handler(honest.peer_id, "/teft/time/1"))
            started = time.monotonic()
            samples = await sample_clocks(me, where, timeout=2.0)
            assert time.monotonic() - started < 5
            assert [s.peer for s in samples] == [honest.peer_id.to_base58()] and abs(samples[0].offset) < 0.5
        finally:
            for _, _, writer in idle:
                writer.close()
            for p in (honest, liar, slow, outsider, me):
                await p.shutdown()

    asyncio.run(main())
