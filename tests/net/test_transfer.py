"""Payload transfer: by hash, size-capped, hash-checked, with fallback to another holder."""

from __future__ import annotations

import asyncio
import hashlib
import os
from contextlib import asynccontextmanager

import msgpack
import pytest
from hivemind.p2p import P2P

from swarm.errors import TransferError
from swarm.net.transfer import (
    CHUNK,
    DATA,
    END,
    HDR,
    PayloadServer,
    TransferStats,
    _read_head,
    _send,
    fetch,
    fetch_any,
    payload_hash,
    protocol_name,
)

RUN = "feedfacecafebeef"
pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def peers(n_servers: int):
    """n server P2Ps plus one client that knows them all; every p2pd is shut down after."""
    made: list[P2P] = []
    try:
        for _ in range(n_servers):
            made.append(await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"]))
        maddrs = [m for p in made for m in await p.get_visible_maddrs()]
        client = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=maddrs)
        made.append(client)
        yield made[:-1], client
    finally:
        for p in made:
            await p.shutdown()


def store_of(*payloads: bytes):
    table = {payload_hash(p): p for p in payloads}
    return table.get


def test_round_trip_5mib():
    payload = os.urandom(5 * 2**20 + 123)
    h = payload_hash(payload)

    async def main():
        async with peers(1) as ([server], client):
            sstats, cstats = TransferStats(), TransferStats()
            srv = await PayloadServer(server, store_of(payload), RUN, stats=sstats).start()
            got = await fetch(client, server.peer_id, h, len(payload), 30, run_id=RUN, stats=cstats)
            assert got == payload
            # the server counts a serve only after the client's ACK
            for _ in range(50):
                if sstats.served:
                    break
                await asyncio.sleep(0.05)
            assert (cstats.fetched, cstats.bytes_in) == (1, len(payload))
            assert (sstats.served, sstats.bytes_out) == (1, len(payload))
            with pytest.raises(TransferError, match="not found") as err:
                await fetch(client, server.peer_id, "00" * 32, 10, 10, run_id=RUN)
            msg = str(err.value)
            assert "\n" not in msg and "000000000000" in msg and str(server.peer_id)[:6] in msg
            await srv.stop()

    asyncio.run(main())


async def _overflowing_handler(info, reader, writer):
    """A hostile server: announces the expected size, then keeps sending."""
    try:
        _, length = await _read_head(reader)
        request = msgpack.unpackb(await reader.readexactly(length))
        size = request["max"]
        await _send(writer, HDR, msgpack.packb({"size": size}))
        for _ in range(size // CHUNK + 3):
            await _send(writer, DATA, b"\0" * CHUNK)
        await _send(writer, END, (size + 3 * CHUNK).to_bytes(8, "big") + hashlib.sha256(b"").digest())
    except Exception:
        pass
    finally:
        writer.close()


def test_more_than_expected_is_refused():
    payload = os.urandom(3 * 2**20)

    async def main():
        async with peers(2) as ([honest, hostile], client):
            # honest server holding a longer payload refuses up front
            await PayloadServer(honest, lambda h: payload, RUN).start()
            with pytest.raises(TransferError, match="over the asked maximum"):
                await fetch(client, honest.peer_id, payload_hash(payload), 2**20, 10, run_id=RUN)
            # hostile server streaming past the size: refused before the extra chunk is read
            await hostile.add_binary_stream_handler(protocol_name(RUN), _overflowing_handler)
            stats = TransferStats()
            with pytest.raises(TransferError, match="more than the expected"):
                await fetch(client, hostile.peer_id, payload_hash(payload), 2 * CHUNK, 10, run_id=RUN, stats=stats)
            assert stats.bytes_in <= 2 * CHUNK and stats.fetch_failed == 1

    asyncio.run(main())


def test_wrong_hash_and_size_refused():
    payload, other = os.urandom(2**20), os.urandom(2**20)

    async def main():
        async with peers(1) as ([server], client):
            await PayloadServer(server, lambda h: other, RUN).start()  # serves the wrong bytes for every hash
            with pytest.raises(TransferError, match="not the requested hash"):
                await fetch(client, server.peer_id, payload_hash(payload), len(payload), 10, run_id=RUN)
            with pytest.raises(TransferError, match="expected 2097152"):
                await fetch(client, server.peer_id, payload_hash(other), 2 * len(other), 10, run_id=RUN)
            # an upper bound is enough when the caller says so
            got = await fetch(client, server.peer_id, payload_hash(other), 2 * len(other), 10, run_id=RUN, exact=False)
            assert got == other

    asyncio.run(main())


def test_fetch_any_falls_back():
    payload = os.urandom(2 * 2**20 + 7)
    h = payload_hash(payload)

    async def main():
        async with peers(2) as ([broken, good], client):
            await PayloadServer(broken, lambda _: os.urandom(len(payload)), RUN).start()
            await PayloadServer(good, store_of(payload), RUN).start()
            stats = TransferStats()
            got = await fetch_any(client, [broken.peer_id, good.peer_id], h, len(payload), 10, run_id=RUN, stats=stats)
            assert got == payload and (stats.fetch_failed, stats.fetched) == (1, 1)
            with pytest.raises(TransferError, match="2 peer"):
                await fetch_any(client, [broken.peer_id, broken.peer_id.to_base58()], h, len(payload), 10, run_id=RUN)
            with pytest.raises(TransferError, match="no peer holds it"):
                await fetch_any(client, [], h, len(payload), 10, run_id=RUN)

    asyncio.run(main())


def test_over_dht_replicas(make_identity):
    """The way peers use it: servers and clients on replicas of their DHT's p2pd."""
    from swarm.net.dht import start_dht, visible_maddrs

    payload = os.urandom(2**20 + 5)
    a = start_dht(make_identity("a"))
    try:
        b = start_dht(make_identity("b"), initial_peers=visible_maddrs(a), check_identity_free=False)
        try:

            async def main():
                pa, pb = await a.replicate_p2p(), await b.replicate_p2p()
                await PayloadServer(pa, store_of(payload), RUN).start()
                return await fetch(pb, pa.peer_id, payload_hash(payload), len(payload), 20, run_id=RUN)

            assert asyncio.run(main()) == payload
        finally:
            b.shutdown()
    finally:
        a.shutdown()


def test_fetch_dials_addresses_from_a_peers_record():
    """Peers that never met: the maddrs a peers record carries (with /p2p/ suffix) are enough."""
    payload = os.urandom(300_000)

    async def main():
        server = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        client = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        try:
            await PayloadServer(server, store_of(payload), RUN).start()
            maddrs = [str(m) for m in await server.get_visible_maddrs()]
            assert all("/p2p/" in m for m in maddrs)
            got = await fetch_any(
                client,
                [server.peer_id.to_base58()],
                payload_hash(payload),
                len(payload),
                10,
                run_id=RUN,
                maddrs={server.peer_id.to_base58(): maddrs},
            )
            assert got == payload
        finally:
            await server.shutdown()
            await client.shutdown()

    asyncio.run(main())
