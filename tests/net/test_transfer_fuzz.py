"""Fuzz every decoder the payload transfer exposes to the network: requests a server reads, frames a client reads.

The pure decoders (request_length, parse_request, Receiver) get random bytes, random msgpack values and
mutated honest transfers: each input is either accepted with every safety property holding, or refused with
one FrameError line. A few real streams check that a hostile client or server costs a log line or a
TransferError within its deadline, and never an exception in the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time

import msgpack
import pytest
from hivemind.p2p import P2P
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.errors import TransferError
from swarm.net.server import PayloadServer
from swarm.net.transfer import BackgroundLoop, fetch
from swarm.net.wire import (
    _MAX_CONTROL,
    CHUNK,
    DATA,
    END,
    ERR,
    HDR,
    MAX_PAYLOAD,
    REQ,
    FrameError,
    Receiver,
    encode_request,
    parse_request,
    payload_hash,
    protocol_name,
    request_length,
)

RUN = "f022f022f022f022"
pytestmark = pytest.mark.timeout(240)
PURE = settings(max_examples=200, deadline=500, database=None)
STREAMS = settings(
    max_examples=25, deadline=5000, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

msgpack_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | msgpack_ints
    | st.floats(allow_nan=True)
    | st.text(max_size=80)
    | st.binary(max_size=80),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.sampled_from(["hash", "max", "size", "offset", "length", "pieces"]),
                      inner, max_size=4),
    max_leaves=12,
)
kinds = st.sampled_from([REQ, HDR, DATA, END, ERR, b"A"]) | st.binary(min_size=1, max_size=1)


def frame(kind: bytes, body: bytes, length: int | None = None) -> bytes:
    return kind + (len(body) if length is None else length).to_bytes(4, "big") + body


def drive(receiver: Receiver, stream: bytes) -> bytes | None:
    """Feed a server's byte stream to a Receiver the way _fetch reads it; None when the bytes run out."""
    pos = 0
    while pos + 5 <= len(stream):
        length = receiver.body_length(stream[pos : pos + 5])
        assert length <= max(CHUNK, _MAX_CONTROL)  # a body is read only after its length was accepted
        pos += 5
        if pos + length > len(stream):
            return None
        data = receiver.take(stream[pos : pos + length])
        pos += length
        assert len(receiver.buf) <= (receiver.announced or 0) <= receiver.expected_size
        if data is not None:
            return data
    return None


# -- server side: the request --------------------------------------------------------------------


@PURE
@given(st.binary(min_size=5, max_size=5))
def test_request_head(head):
    try:
        length = request_length(head)
    except FrameError as e:
        assert "\n" not in str(e)
        return
    assert head[:1] == REQ and 0 <= length <= _MAX_CONTROL


def _check_request(body: bytes) -> None:
    try:
        request = parse_request(body)
        wanted, max_size = request.hash, request.max
    except FrameError as e:
        assert "\n" not in str(e) and len(str(e)) < 200
        return
    assert len(wanted) == 64 and int(wanted, 16) >= 0 and 0 <= max_size <= MAX_PAYLOAD
    assert (request.offset is None) == (request.length is None) and not (request.pieces and request.offset is not None)
    assert request.offset is None or (0 <= request.offset <= MAX_PAYLOAD and 0 <= request.length <= MAX_PAYLOAD)


@PURE
@given(st.binary(max_size=_MAX_CONTROL))
def test_request_random_bytes(body):
    _check_request(body)


@PURE
@given(msgpack_values)
def test_request_random_msgpack(value):
    _check_request(msgpack.packb(value))


@PURE
@given(
    st.one_of(st.text(max_size=70), st.binary(max_size=64), msgpack_ints, st.none(), st.sampled_from(["ab" * 32])),
    st.one_of(msgpack_ints, st.booleans(), st.floats(), st.text(max_size=5)),
)
def test_request_wrong_types(wanted, max_size):
    body = msgpack.packb({"hash": wanted, "max": max_size})
    try:
        got = parse_request(body)
    except FrameError:
        valid_hash = isinstance(wanted, str) and len(wanted) == 64 and set(wanted) <= set("0123456789abcdef")
        valid_size = type(max_size) is int and 0 <= max_size <= MAX_PAYLOAD
        assert not (valid_hash and valid_size)
        return
    assert (got.hash, got.max) == (wanted, max_size)


@PURE
@given(st.dictionaries(st.sampled_from(["offset", "length", "pieces"]), msgpack_values, max_size=3))
def test_request_random_range_and_pieces_fields(extra):
    """A valid hash and max with any offset, length and pieces values: a well-formed range or manifest request,
    or one FrameError line."""
    _check_request(msgpack.packb({"hash": "ab" * 32, "max": 1 << 20, **extra}))


@PURE
@given(st.binary(min_size=32, max_size=32), st.integers(min_value=0, max_value=MAX_PAYLOAD))
def test_request_round_trip(digest, max_size):
    got = parse_request(encode_request(digest.hex(), max_size))
    assert (got.hash, got.max, got.offset, got.pieces) == (digest.hex(), max_size, None, False)


# -- client side: what a (possibly malicious) server sends ----------------------------------------


def _receive(stream: bytes, wanted: str, expected: int, exact: bool) -> bytes | None:
    receiver = Receiver(wanted, expected, exact)
    try:
        data = drive(receiver, stream)
    except FrameError as e:
        assert "\n" not in str(e)
        return None
    if data is not None:  # accepted: the bytes are exactly what was asked for
        assert payload_hash(data) == wanted and len(data) <= expected and (not exact or len(data) == expected)
    return data


@PURE
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=2**20), st.booleans())
def test_receiver_random_bytes(stream, expected, exact):
    _receive(stream, "00" * 32, expected, exact)


@PURE
@given(st.lists(st.tuples(kinds, st.binary(max_size=40)), max_size=6), st.booleans())
def test_a_range_receiver_keeps_only_pieces_that_match(frames, honest_header):
    """A range of three 16-byte pieces: whatever a server sends, every piece handed over hashes to its digest."""
    data = os.urandom(40)
    pieces = [data[i : i + 16] for i in range(0, 40, 16)]
    digests = [hashlib.sha256(piece).digest() for piece in pieces]
    kept = {}
    receiver = Receiver(None, 40, True, pieces=digests, piece_size=16, on_piece=lambda i, b: kept.setdefault(i, b))
    head = [frame(HDR, msgpack.packb({"size": 40}))] if honest_header else []
    try:
        drive(receiver, b"".join(head + [frame(k, b) for k, b in frames]))
    except FrameError as e:
        assert "\n" not in str(e)
    assert all(hashlib.sha256(b).digest() == digests[i] for i, b in kept.items()), kept


@PURE
@given(st.lists(st.tuples(kinds, st.one_of(st.binary(max_size=60), msgpack_values.map(msgpack.packb))), max_size=6))
def test_receiver_random_frames(frames):
    _receive(b"".join(frame(k, b) for k, b in frames), "11" * 32, 1000, False)


@PURE
@given(msgpack_values, st.integers(min_value=0, max_value=2**64 - 1), st.booleans())
def test_receiver_random_header(header, claimed, exact):
    """Header maps of any shape (sizes of any type and magnitude), then a lying END."""
    for value in (header, {"size": claimed}, {"size": header}):
        body = msgpack.packb(value)
        _receive(frame(HDR, body) + frame(END, claimed.to_bytes(8, "big") + bytes(32)), "22" * 32, 4096, exact)


def _honest_stream(payload: bytes) -> list[bytes]:
    frames = [frame(HDR, msgpack.packb({"size": len(payload)}))]
    frames += [frame(DATA, payload[i : i + 700]) for i in range(0, len(payload), 700)]
    frames.append(frame(END, len(payload).to_bytes(8, "big") + hashlib.sha256(payload).digest()))
    return frames


@PURE
@given(
    st.binary(min_size=1, max_size=2000),
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "cut", "insert", "length", "drop"]), st.integers(0, 10**6), st.binary(max_size=40)
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_receiver_mutated_honest_transfer(payload, mutations):
    """An honest transfer, then bytes flipped, cut, inserted or lengths lied about: never wrong bytes accepted."""
    wanted = payload_hash(payload)
    assert _receive(b"".join(_honest_stream(payload)), wanted, len(payload), True) == payload
    # a self-consistent transfer of other bytes (END matches them) is still refused
    other = bytearray(payload)
    other[mutations[0][1] % len(other)] ^= 0xFF
    assert _receive(b"".join(_honest_stream(bytes(other))), wanted, len(payload), True) is None
    frames = _honest_stream(payload)
    for op, at, extra in mutations:
        i = at % len(frames)
        f = bytearray(frames[i])
        if op == "flip" and f:
            f[at % len(f)] ^= 1 + at % 255
        elif op == "cut":
            f = f[: at % (len(f) + 1)]
        elif op == "insert":
            frames.insert(i, frame(extra[:1] or DATA, extra[1:]))
            continue
        elif op == "length" and len(f) >= 5:
            f[1:5] = (at * 4099 % 2**32).to_bytes(4, "big")
        elif op == "drop":
            del frames[i]
            if not frames:
                return
            continue
        frames[i] = bytes(f)
    got = _receive(b"".join(frames), wanted, len(payload), True)
    assert got is None or got == payload


# -- real streams ---------------------------------------------------------------------------------


class LogLines(logging.Handler):
    """Collects the transfer module's log lines."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def net():
    """One loop, a PayloadServer with short deadlines, a hostile server and a client; all shut down after."""
    loop = BackgroundLoop("fuzz-loop")
    errors: list = []
    lines = LogLines()
    transfer_log = logging.getLogger("swarm.net.transfer")
    old_level = transfer_log.level
    transfer_log.setLevel(logging.INFO)
    transfer_log.addHandler(lines)
    loop.loop.set_exception_handler(lambda _loop, context: errors.append(context.get("message")))
    payload = os.urandom(200_000)
    hostile_bytes: list[bytes] = [b""]

    async def hostile(_info, reader, writer):
        """Reads the request, answers with whatever the current example says, then closes."""
        try:
            await asyncio.wait_for(reader.readexactly(5), 2)
            writer.write(hostile_bytes[0])
            await asyncio.wait_for(writer.drain(), 2)
        except Exception:  # noqa: BLE001 - the fuzz is about the client's side
            pass
        finally:
            writer.close()

    async def make():
        server = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        evil = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        maddrs = [*await server.get_visible_maddrs(), *await evil.get_visible_maddrs()]
        client = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=maddrs)
        srv = PayloadServer(server, {payload_hash(payload): payload}.get, RUN, header_timeout=0.5, io_timeout=1,
                            ack_timeout=1, max_per_peer=64)
        await srv.start()
        await evil.add_binary_stream_handler(protocol_name(RUN), hostile)
        return server, evil, client, srv

    server, evil, client, srv = loop.run(make(), timeout=60)
    try:
        yield loop, server, evil, client, srv, payload, hostile_bytes, errors, lines
    finally:
        transfer_log.removeHandler(lines)
        transfer_log.setLevel(old_level)
        for p in (client, evil, server):
            try:
                loop.run(p.shutdown(), timeout=10)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
        loop.close()


@STREAMS
@given(st.one_of(st.binary(max_size=200), msgpack_values.map(lambda v: frame(REQ, msgpack.packb(v)))))
def test_server_survives_hostile_clients(net, request_bytes):
    loop, server, _, client, srv, _, _, errors, log = net
    events = lambda: srv.stats.refused + srv.stats.served + srv.stats.serve_failed  # noqa: E731
    before, lines_before = events(), len(log.lines)

    async def one():
        _, reader, writer = await client.call_binary_stream_handler(server.peer_id, protocol_name(RUN))
        try:
            writer.write(request_bytes)
            await writer.drain()
            start = time.monotonic()
            while await asyncio.wait_for(reader.read(65536), 5):  # bounded: the server closes within its deadlines
                pass
            return time.monotonic() - start
        finally:
            writer.close()

    assert loop.run(one(), timeout=15) < 4.0
    assert not errors, errors
    # the stream was settled once (counted before the server closed it), with at most one line logged
    assert events() == before + 1 and len(log.lines) - lines_before <= 1, log.lines[lines_before:]
    assert all("\n" not in line for line in log.lines[lines_before:])


def test_server_still_serves_after_the_fuzz(net):
    loop, server, _, client, srv, payload, _, errors, _ = net
    got = loop.run(fetch(client, server.peer_id, payload_hash(payload), len(payload), 10, run_id=RUN), timeout=15)
    assert got == payload and not errors


@STREAMS
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(st.tuples(kinds, st.binary(max_size=50)), max_size=4).map(lambda fs: b"".join(frame(*f) for f in fs)),
        st.integers(min_value=0, max_value=2**64 - 1).map(lambda n: frame(HDR, msgpack.packb({"size": n}))),
    )
)
def test_client_survives_hostile_servers(net, response):
    loop, _, evil, client, _, _, hostile_bytes, errors, _ = net
    hostile_bytes[0] = response
    start = time.monotonic()
    with pytest.raises(TransferError) as err:
        loop.run(fetch(client, evil.peer_id, "33" * 32, 100_000, 3, run_id=RUN), timeout=10)
    assert time.monotonic() - start < 4.0 and "\n" not in str(err.value)
    assert not errors, errors
