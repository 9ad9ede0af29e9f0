"""The stalling adversaries' own code against a real payload server: rounds of idle streams (slowloris), and
slow readers that ask properly, read every byte and never ACK, from several free keys (slow-reader); honest
fetches, a validator's above all, still complete while they run."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import asynccontextmanager, suppress

import pytest
from hivemind.p2p import P2P
from netutil import until

from swarm.errors import TransferError
from swarm.net.server import PayloadServer
from swarm.net.transfer import fetch
from swarm.net.wire import HDR, REQ, encode_request, payload_hash, protocol_name, read_head, send_frame, source_address
from swarm.sim.adversaries.stalling import ReadTally, hold_idle_streams, read_once, read_without_ack

RUN = "feedfacecafebeef"
LOCAL = "/ip4/127.0.0.1/tcp/0"
pytestmark = pytest.mark.timeout(240)


def test_slowloris_rounds_do_not_starve_an_honest_fetch():
    payload = os.urandom(1 << 20)
    digest = payload_hash(payload)

    async def main():
        server = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        maddrs = [str(m) for m in await server.get_visible_maddrs()]
        attacker = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=maddrs)
        client = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=maddrs)
        try:
            srv = await PayloadServer(server, {digest: payload}.get, RUN).start()
            targets = {server.peer_id.to_base58(): [m.split("/p2p/")[0] for m in maddrs]}
            hold = asyncio.create_task(hold_idle_streams(attacker, targets, protocol_name(RUN), time.time() + 5))
            await asyncio.sleep(1.5)  # the first round is open and held
            start = time.perf_counter()
            got = await fetch(client, server.peer_id, digest, len(payload), 30, run_id=RUN)
            elapsed = time.perf_counter() - start
            opened = await hold
            assert got == payload and elapsed < 5.0, elapsed
            assert opened >= 100 and srv.stats.refused >= 50, (opened, srv.stats.refused)
        finally:
            for p in (client, attacker, server):
                await p.shutdown()

    asyncio.run(main())


# -- slow readers: a valid request, every byte read, never an ACK, from several free keys -----------------------

KEYS, STREAMS = 6, 4  # the outside tester's attack: 6 keys x 4 streams, each at the per-peer cap


@asynccontextmanager
async def stage(attackers: int = KEYS):
    """A server's P2P, an honest client's and `attackers` raw attacker P2Ps of the test's own (a fresh key each);
    every one shut down after."""
    made: list[P2P] = []
    try:
        made.append(await P2P.create(host_maddrs=[LOCAL]))
        maddrs = [str(m) for m in await made[0].get_visible_maddrs()]
        made += await asyncio.gather(*(P2P.create(host_maddrs=[LOCAL], initial_peers=maddrs)
                                       for _ in range(1 + attackers)))
        targets = {made[0].peer_id.to_base58(): [m.split("/p2p/")[0] for m in maddrs]}
        yield made[0], made[1], made[2:], targets
    finally:
        for p in made:
            with suppress(Exception):
                await p.shutdown()


async def _timed_fetches(client, server, digest: str, size: int, n: int, gap: float = 0.3) -> list:
    """n honest fetches one after another: (seconds, None) or (seconds, why) each."""
    results = []
    for _ in range(n):
        start = time.perf_counter()
        try:
            await fetch(client, server.peer_id, digest, size, 10, run_id=RUN)
            results.append((time.perf_counter() - start, None))
        except TransferError as e:
            results.append((time.perf_counter() - start, str(e)))
        await asyncio.sleep(gap)
    return results


async def _under_slow_readers(priority: bool, caplog) -> tuple[list, ReadTally, PayloadServer]:
    """6 keys x 4 streams of slow readers at one server holding a 1 MiB payload, and 6 honest fetches while
    they run, from a client that is (or is not) one of the server's priority peers."""
    payload = os.urandom(1 << 20)
    digest = payload_hash(payload)
    tally = ReadTally()
    async with stage() as (server, client, attackers, targets):
        validator = client.peer_id.to_base58() if priority else "12D3KooWSomeValidatorElsewhere"
        srv = await PayloadServer(server, {digest: payload}.get, RUN, priority={validator}).start()
        attack = asyncio.create_task(read_without_ack(
            attackers, targets, {server.peer_id.to_base58(): [(digest, len(payload))]}, protocol_name(RUN),
            time.time() + 40, streams=STREAMS, tally=tally))
        try:
            # the attack bites first: every key has read payloads and sits on its streams without an ACK
            assert await until(lambda: tally.payloads >= 8, 10), tally
            caplog.clear()
            results = await _timed_fetches(client, server, digest, len(payload), 6, gap=1.0)  # over ACK deadlines
        finally:
            attack.cancel()
            with suppress(asyncio.CancelledError):
                await attack
        return results, tally, srv


@pytest.mark.timeout(240)
def test_slow_readers_do_not_starve_a_validator(caplog):
    """Every fetch of an allowlisted validator is served in seconds while 24 streams from 6 free keys read
    payloads and never ACK (before: 'no answer within 3s of the request' for all of them), and the attack's
    dozens of failed serves cost a few log lines, not one each."""
    with caplog.at_level(logging.INFO, logger="swarm.net.transfer"):
        results, tally, srv = asyncio.run(_under_slow_readers(True, caplog))
    assert all(why is None for _, why in results), results
    assert max(s for s, _ in results) < 3.0, results
    assert tally.payloads >= 8, tally  # the attack was real: it read payloads and held them
    lines = [r for r in caplog.records if r.name == "swarm.net.transfer" and r.levelno >= logging.INFO]
    assert len(lines) <= 10, [r.getMessage() for r in lines]


@pytest.mark.timeout(240)
def test_slow_readers_do_not_starve_an_honest_stranger(caplog):
    """The same attack from the same address as an honest peer that is not a validator: it is still served."""
    with caplog.at_level(logging.INFO, logger="swarm.net.transfer"):
        results, tally, srv = asyncio.run(_under_slow_readers(False, caplog))
    assert all(why is None for _, why in results), results
    assert max(s for s, _ in results) < 3.0, results
    assert tally.payloads >= 8, tally


@pytest.mark.timeout(240)
@pytest.mark.parametrize("limit", ["per-peer", "per-address"])
def test_slow_readers_take_no_more_than_their_budget(limit):
    """Readers that read a payload, close without an ACK and ask again at once: before, 6 keys took about
    everything the server could push; now each key gets `budget_per_peer` payloads, and all keys behind one
    address `budget_per_address`, then ERR 'budget spent' at once. A validator is exempt."""
    payload = os.urandom(1 << 20)
    digest = payload_hash(payload)
    per_peer, per_address = (2, 100) if limit == "per-peer" else (100, 8)
    bound = min(KEYS * per_peer, per_address) * len(payload)
    tally = ReadTally()

    async def main():
        async with stage() as (server, client, attackers, targets):
            srv = await PayloadServer(server, {digest: payload}.get, RUN, priority={client.peer_id.to_base58()},
                                      budget_per_peer=per_peer, budget_per_address=per_address).start()
            await read_without_ack(attackers, targets, {server.peer_id.to_base58(): [(digest, len(payload))]},
                                   protocol_name(RUN), time.time() + 6, streams=STREAMS, hold_s=0, tally=tally)
            got = await fetch(client, server.peer_id, digest, len(payload), 10, run_id=RUN)
            return got, srv

    got, srv = asyncio.run(main())
    assert got == payload  # the validator is served after the address's budget is spent
    assert 0 < tally.bytes_in <= bound, (tally, bound)
    assert srv.stats.bytes_out <= bound + len(payload), srv.stats
    assert tally.refused >= KEYS, tally  # refused at once, with a reason, once spent


@pytest.mark.timeout(240)
def test_a_reader_that_stops_reading_loses_its_slot_in_seconds():
    """A client that asks for 8 MiB and stops reading after the header holds the only slot for no more than the
    stall deadline (before: 10 s per stalled write), and the next fetch is served."""
    payload = os.urandom(8 << 20)
    digest = payload_hash(payload)

    async def main():
        async with stage(attackers=1) as (server, client, (reader_peer,), _):
            srv = await PayloadServer(server, {digest: payload}.get, RUN, max_concurrent=1).start()
            _, reader, writer = await reader_peer.call_binary_stream_handler(server.peer_id, protocol_name(RUN))
            try:
                await send_frame(writer, REQ, encode_request(digest, len(payload)))
                kind, _ = await asyncio.wait_for(read_head(reader), 5)
                start = time.perf_counter()  # from here on nothing is read: p2pd buffers about 1 MiB of it
                assert kind == HDR
                assert await until(lambda: srv.stats.serve_failed == 1, 15)
                lost = time.perf_counter() - start
                served = await fetch(client, server.peer_id, digest, len(payload), 10, run_id=RUN)
                assert await until(lambda: srv.stats.served == 1, 5)  # counted on the ACK
            finally:
                writer.close()
            return lost, served

    lost, served = asyncio.run(main())
    assert lost < 5.0, lost
    assert served == payload


@pytest.mark.timeout(240)
def test_a_reader_that_never_acks_holds_no_slot():
    """A client that reads a whole payload and never ACKs gives the only slot back at END (the next fetch is
    served while it still sits on its stream) and loses the stream within the ACK deadline (before: 10 s)."""
    payload = os.urandom(1 << 20)
    digest = payload_hash(payload)

    async def main():
        async with stage(attackers=1) as (server, client, (reader_peer,), _):
            srv = await PayloadServer(server, {digest: payload}.get, RUN, max_concurrent=1).start()
            tally = ReadTally()
            start = time.perf_counter()
            holder = asyncio.create_task(read_once(reader_peer, server.peer_id, protocol_name(RUN), digest,
                                                   len(payload), 30, tally))
            try:
                assert await until(lambda: tally.payloads == 1, 10)
                fetched = await _timed_fetches(client, server, digest, len(payload), 1, gap=0)
                held = srv.streams_of(reader_peer.peer_id)  # still open, un-ACKed, while the fetch was served
                await asyncio.wait_for(holder, 10)  # returns when the server closes the stream
                dropped = time.perf_counter() - start
            finally:
                holder.cancel()
            return fetched, held, dropped, srv

    fetched, held, dropped, srv = asyncio.run(main())
    assert fetched[0][1] is None and fetched[0][0] < 2.0, fetched
    assert held == 1
    assert dropped < srv.ack_timeout + 2.0, dropped
    assert (srv.stats.served, srv.stats.serve_failed) == (1, 1), srv.stats


def test_source_address_counts_hosts_not_ports():
    assert source_address("/ip4/127.0.0.1/tcp/4001") == source_address("/ip4/127.0.0.1/tcp/5002") == "127.0.0.1"
    assert source_address("/ip6/2001:db8:1:2:aaaa::1/tcp/1") == source_address("/ip6/2001:db8:1:2:ffff::9/udp/2/quic")
    assert source_address("/ip6/2001:db8:1:2::1/tcp/1") != source_address("/ip6/2001:db8:1:3::1/tcp/1")
    assert source_address("/dns4/example.org/tcp/1") == "example.org"
