"""Objects fetched in pieces from several holders at once: every piece checked against the pinned piece manifest
before it is kept, a holder that sends a bad piece out after that range, and a fetch that resumes from the
pieces a partial file holds.

The holders are real libp2p peers running the real payload server; the bad one serves the same object with one
byte flipped in one piece (same size: only the piece check can tell)."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
from hivemind.p2p import P2P

from swarm.errors import TransferError
from swarm.net.multisource import fetch_pieces
from swarm.net.pieces import PIECE, PieceSink, manifest_size, piece_manifest, pieces_root, read_manifest
from swarm.net.server import PayloadServer
from swarm.net.wire import (
    DATA,
    END,
    HDR,
    FrameError,
    Receiver,
    TransferStats,
    encode_request,
    parse_request,
    payload_hash,
)

RUN = "9ece59ece59ece59"
pytestmark = pytest.mark.timeout(240)
SIZE = 5 * PIECE + 12345  # six pieces, the last one short


def _frame(kind: bytes, body: bytes) -> tuple[bytes, bytes]:
    return kind + len(body).to_bytes(4, "big"), body


def test_the_piece_manifest_names_every_piece_and_the_size():
    data = os.urandom(SIZE)
    body = piece_manifest(data)
    size, digests = read_manifest(body)
    assert size == SIZE and len(body) == manifest_size(SIZE) and len(digests) == 6
    assert digests[5] == hashlib.sha256(data[5 * PIECE :]).digest()
    assert pieces_root(data) == hashlib.sha256(body).hexdigest()
    assert pieces_root(data[:-1] + bytes([data[-1] ^ 1])) != pieces_root(data)
    with pytest.raises(TransferError, match="piece manifest of"):
        read_manifest(body[:-1])


def test_a_range_request_round_trips_and_a_bad_one_is_refused():
    req = parse_request(encode_request("ab" * 32, SIZE, offset=PIECE, length=2 * PIECE))
    assert (req.offset, req.length, req.pieces) == (PIECE, 2 * PIECE, False)
    assert parse_request(encode_request("ab" * 32, SIZE, pieces=True)).pieces is True
    import msgpack

    for bad in ({"offset": 1}, {"offset": -1, "length": 2}, {"pieces": 1}, {"pieces": True, "offset": 0, "length": 1}):
        with pytest.raises(FrameError):
            parse_request(msgpack.packb({"hash": "ab" * 32, "max": SIZE, **bad}))


def test_a_bad_piece_is_refused_on_arrival_and_the_pieces_before_it_are_kept():
    data = os.urandom(3 * PIECE)
    digests = read_manifest(piece_manifest(data))[1]
    kept = {}
    receiver = Receiver(None, len(data), True, pieces=digests, on_piece=lambda i, b: kept.setdefault(i, b))
    import msgpack

    head, body = _frame(HDR, msgpack.packb({"size": len(data)}))
    receiver.body_length(head)
    receiver.take(body)
    for i in range(2):
        piece = data[i * PIECE : (i + 1) * PIECE]
        if i == 1:
            piece = piece[:-1] + bytes([piece[-1] ^ 1])
        head, body = _frame(DATA, piece)
        receiver.body_length(head)
        if i == 1:
            with pytest.raises(FrameError, match="piece 1 of the range does not match"):
                receiver.take(body)
        else:
            receiver.take(body)
    assert kept == {0: data[:PIECE]}
    # a frame that is not a whole piece is refused before its body is read
    receiver = Receiver(None, len(data), True, pieces=digests)
    head, body = _frame(HDR, msgpack.packb({"size": len(data)}))
    receiver.body_length(head)
    receiver.take(body)
    with pytest.raises(FrameError, match="not the next whole piece"):
        receiver.body_length(_frame(DATA, data[:1000])[0])
    assert END  # (the END frame is checked as for whole objects: tests/net/test_transfer_fuzz.py)


def test_a_partial_file_resumes_with_the_pieces_that_still_check_out(tmp_path):
    data = os.urandom(SIZE)
    digests = read_manifest(piece_manifest(data))[1]
    path = tmp_path / "partial" / "obj"
    sink = PieceSink(SIZE, digests, path)
    for i in (0, 2, 5):
        sink.put(i, data[i * PIECE : (i + 1) * PIECE])
    sink.close(done=False)
    with open(path, "r+b") as f:  # a piece torn by a crash: no longer counts
        f.seek(2 * PIECE + 7)
        f.write(b"\x00\x01")
    again = PieceSink(SIZE, digests, path)
    assert again.have == {0, 5} and again.missing() == [1, 2, 3, 4]
    for i in again.missing():
        again.put(i, data[i * PIECE : (i + 1) * PIECE])
    assert again.bytes() == data
    again.close(done=True)
    assert not path.exists()


async def _holders(count: int, lookups):
    first = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    maddrs = [str(m) for m in await first.get_visible_maddrs()]
    peers = [first] + [await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=maddrs)
                       for _ in range(count)]
    servers = [await PayloadServer(p, lookup, RUN, TransferStats()).start()
               for p, lookup in zip(peers, lookups, strict=True)]
    where = {p.peer_id.to_base58(): [str(m).split("/p2p/")[0] for m in await p.get_visible_maddrs()]
             for p in peers}
    return peers, servers, where


def test_pieces_come_from_every_holder_and_a_corrupted_piece_is_fetched_again_elsewhere():
    data = os.urandom(SIZE)
    digest, root = payload_hash(data), pieces_root(data)
    bad = bytearray(data)
    for i in range(0, SIZE, PIECE):  # every piece it sends is corrupted (same size)
        bad[i + 10] ^= 0xFF
    lookups = [{digest: bytes(bad)}.get, {digest: data}.get, {digest: data}.get, lambda _: None]

    async def main():
        peers, servers, where = await _holders(3, lookups)
        servers[0]._manifests[digest] = piece_manifest(data)  # it names the true pieces, then sends a bad one
        fetcher = peers[-1]
        try:
            failed = {}
            holders = [p.peer_id.to_base58() for p in peers[:3]]
            got = await fetch_pieces(fetcher, holders, digest, root, SIZE, 20.0, run_id=RUN, maddrs=where, span=1,
                                     on_failure=lambda h, why: failed.setdefault(h, why))
            return got, failed, holders, [s.stats.bytes_out for s in servers[:3]]
        finally:
            for p in peers:
                await p.shutdown()

    got, failed, holders, sent = asyncio.run(main())
    assert got == data
    assert list(failed) == [holders[0]] and "does not match the piece manifest" in failed[holders[0]], failed
    assert sent[1] > 0 and sent[2] > 0, sent  # both honest holders served pieces: in parallel, not in turn


def test_a_fetch_cut_short_resumes_from_its_partial_file(tmp_path):
    data = os.urandom(SIZE)
    digest, root = payload_hash(data), pieces_root(data)
    served = {"ranges": 0}

    def flaky(h):  # the manifest and the first two ranges, then it loses the object
        if h != digest:
            return None
        served["ranges"] += 1
        return data if served["ranges"] <= 3 else None

    path = tmp_path / "partial" / digest

    async def main():
        peers, _, where = await _holders(2, [flaky, {digest: data}.get, lambda _: None])
        fetcher, stats = peers[-1], TransferStats()
        try:
            with pytest.raises(TransferError, match="pieces not fetched"):
                await fetch_pieces(fetcher, [peers[0].peer_id.to_base58()], digest, root, SIZE, 20.0, run_id=RUN,
                                   maddrs=where, span=1, per_holder=1, partial=path)
            assert path.exists()
            got = await fetch_pieces(fetcher, [peers[1].peer_id.to_base58()], digest, root, SIZE, 20.0,
                                     run_id=RUN, maddrs=where, span=1, partial=path, stats=stats)
            return got, stats.bytes_in
        finally:
            for p in peers:
                await p.shutdown()

    got, second = asyncio.run(main())
    assert got == data and not path.exists()
    # the second fetch took the manifest and the four pieces the first left, not the two it kept
    assert second == manifest_size(SIZE) + SIZE - 2 * PIECE, second


def test_a_payload_of_several_pieces_comes_in_pieces_and_the_standby_holder_only_when_needed():
    """fetch_many with a pieces root: the first `spread` holders are asked for ranges (a validator that serves a
    bad piece is out after it), and the last holder (the miner) stands by until one drops out."""
    from swarm.net.fetchmany import FetchRequest, fetch_many

    data = os.urandom(SIZE)
    digest, root = payload_hash(data), pieces_root(data)
    bad = bytearray(data)
    for i in range(0, SIZE, PIECE):
        bad[i + 1] ^= 0x01

    async def main(lookups, spread):
        peers, servers, where = await _holders(3, lookups)
        try:
            request = FetchRequest(digest, SIZE, [p.peer_id.to_base58() for p in peers[:3]], maddrs=where, root=root,
                                   spread=spread)
            [result] = await fetch_many(peers[-1], [request], 60.0, 1, timeout=20.0, run_id=RUN)
            return result, [s.stats.bytes_out for s in servers[:3]]
        finally:
            for p in peers:
                await p.shutdown()

    good = {digest: data}.get
    result, sent = asyncio.run(main([good, good, good, lambda _: None], 2))
    assert result.data == data and sent[0] > 0 and sent[1] > 0 and sent[2] == 0, (result.error, sent)
    primed = {digest: bytes(bad)}.get
    result, sent = asyncio.run(main([primed, good, good, lambda _: None], 2))  # the first validator sends bad pieces...
    assert result.data == data and sent[2] > 0, (result.error, sent)  # ...so the miner is asked too


def test_serving_a_big_object_does_not_raise_a_strangers_payload_budget():
    """Budgets count copies of what a reader takes: after the 8x larger pack, a stranger gets 7 more payload
    copies of its 8, not 7 x 8 (a budget in bytes of the largest object served gave it that)."""
    from swarm.net.transfer import fetch
    from swarm.net.wire import BUDGET_PER_PEER

    payload, pack = os.urandom(PIECE // 2), os.urandom(4 * PIECE)
    objects = {payload_hash(payload): payload, payload_hash(pack): pack}

    async def main():
        peers, servers, where = await _holders(1, [objects.get, lambda _: None])
        holder, reader = peers[0].peer_id.to_base58(), peers[-1]
        try:
            await fetch(reader, holder, payload_hash(pack), len(pack), 20.0, run_id=RUN, maddrs=where[holder])
            got = 0
            for _ in range(2 * BUDGET_PER_PEER):
                try:
                    await fetch(reader, holder, payload_hash(payload), len(payload), 20.0, run_id=RUN,
                                maddrs=where[holder])
                    got += 1
                except TransferError as err:
                    assert "budget spent by this peer" in str(err), err
            return got, servers[0].budget_used(reader.peer_id)
        finally:
            for p in peers:
                await p.shutdown()

    got, used = asyncio.run(main())
    assert got == BUDGET_PER_PEER - 1 and used == pytest.approx(BUDGET_PER_PEER, abs=0.01), (got, used)


def test_a_reader_asking_for_manifests_again_makes_no_server_hash_an_object_twice(monkeypatch):
    """A piece manifest costs the server a pass over the object and the reader a few bytes of budget: a stranger
    cycling through every object the server holds gets each manifest computed once (with 16 kept, 20 objects
    asked twice were hashed 40 times)."""
    import swarm.net.server as server_module
    from swarm.net.transfer import fetch

    objects = {payload_hash(o): o for o in (os.urandom(PIECE + 1) for _ in range(20))}
    passes = []
    real = server_module.piece_manifest
    monkeypatch.setattr(server_module, "piece_manifest", lambda data: passes.append(1) or real(data))

    async def main():
        peers, _, where = await _holders(1, [objects.get, lambda _: None])
        holder, reader = peers[0].peer_id.to_base58(), peers[-1]
        try:
            for _ in range(2):
                for digest, data in objects.items():
                    await fetch(reader, holder, digest, len(data), 20.0, run_id=RUN, maddrs=where[holder],
                                manifest_root=pieces_root(data))
        finally:
            for p in peers:
                await p.shutdown()

    asyncio.run(main())
    assert len(passes) == len(objects), len(passes)
