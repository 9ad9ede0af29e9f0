"""Serve and fetch byte payloads by content hash over hivemind's libp2p streams.

Wire format (one raw binary stream per fetch; every frame is 1 type byte + 4-byte
big-endian length + body):

    client -> server  REQ   msgpack {"hash": sha256 hex, "max": expected size}
    server -> client  HDR   msgpack {"size": n}         (or ERR utf-8 reason, then close)
    server -> client  DATA  <= 1 MiB of payload, repeated
    server -> client  END   8-byte length + 32-byte sha256 digest
    client -> server  ACK   empty; the server keeps the stream open until it arrives

The client refuses a frame before reading its body when it would take the total past the
announced size, and checks length and hash against both END and the requested hash. The
server waits for the ACK because a stream closed right after its last write sometimes
lost that write (HIVEMIND_NOTES.md). Raw streams run several times faster than
hivemind's protobuf streams and need no .proto file.

An idle client cannot hold the server: a stream takes one of the serving slots only after a
valid request arrived within `header_timeout`, one remote peer id holds at most
`max_per_peer` streams at once (extra ones get ERR and are closed at once), and every later
read or write has a deadline. Bytes from the network are decoded only by the pure
`parse_request` (server) and `Receiver` (client), which raise FrameError for anything else.

`fetch_many` fetches a validator's payloads in a caller-given order, several at once, under
one wall-clock budget, so one slow peer costs at most its own timeout.

All functions are coroutines on the event loop that owns the P2P object (for a DHT,
`await dht.replicate_p2p()` in that loop); BackgroundLoop runs one for synchronous code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
from hivemind.p2p import P2P, PeerID
from hivemind.utils.multiaddr import Multiaddr

from swarm.errors import TransferError

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
PROTOCOL_VERSION = 1
REQ, HDR, DATA, END, ERR, ACK = b"Q", b"H", b"D", b"E", b"X", b"A"
_FRAME_HEAD = 5
_MAX_CONTROL = 4096
_END_LENGTH = 40
MAX_PAYLOAD = 1 << 40  # sizes above this in a request or header are malformed, not just large
HEADER_TIMEOUT = 3.0  # the whole request must arrive within this, before the stream may take a slot
IO_TIMEOUT = 10.0  # any later read or write that makes no progress for this long ends the stream
ACK_TIMEOUT = 10.0
SLOT_TIMEOUT = 10.0  # a valid request waits this long for a free slot, then gets ERR "busy"
MIN_RATE = 256 * 1024  # bytes/s: a client reading slower than this loses its slot
_HEX64 = re.compile(r"[0-9a-f]{64}")

T = TypeVar("T")


class FrameError(ValueError):
    """Bytes from the network that break the wire format (or a peer's refusal); one line."""


@dataclass
class TransferStats:
    """Counters for the peer's stats line; one instance per server or client role."""

    bytes_in: int = 0
    bytes_out: int = 0
    fetched: int = 0
    fetch_failed: int = 0
    served: int = 0
    serve_failed: int = 0
    refused: int = 0  # streams closed before a slot: over the per-peer or open-stream cap, no/bad request


def payload_hash(data: bytes | bytearray | memoryview) -> str:
    """The content hash payloads are asked for by (sha256 hex)."""
    return hashlib.sha256(data).hexdigest()


def protocol_name(run_id: str) -> str:
    """Stream protocol id; the run id keeps runs on one machine apart."""
    return f"/teft/{run_id}/payload/{PROTOCOL_VERSION}"


# -- pure decoding of what the network sends ----------------------------------------------------


def parse_head(head: bytes) -> tuple[bytes, int]:
    """(kind, body length) of a 5-byte frame head."""
    if len(head) != _FRAME_HEAD:
        raise FrameError(f"frame head of {len(head)} bytes, not {_FRAME_HEAD}")
    return bytes(head[:1]), int.from_bytes(head[1:], "big")


def request_length(head: bytes) -> int:
    """Body length of the REQ frame a server reads first; FrameError for any other frame."""
    kind, length = parse_head(head)
    if kind != REQ:
        raise FrameError(f"expected a request frame, got {kind!r}")
    if length > _MAX_CONTROL:
        raise FrameError(f"request frame of {length} bytes, over {_MAX_CONTROL}")
    return length


def _unpack_map(body: bytes, what: str) -> dict:
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # noqa: BLE001 - msgpack raises several types for bad input; all mean "malformed"
        raise FrameError(f"{what} is not msgpack ({type(e).__name__})") from None
    if not isinstance(value, dict):
        raise FrameError(f"{what} is a {type(value).__name__}, not a map")
    return value


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PAYLOAD


def parse_request(body: bytes) -> tuple[str, int]:
    """(hash, max size) from a REQ body; FrameError unless it is a map with a sha256 hex and a size."""
    request = _unpack_map(body, "request")
    wanted, max_size = request.get("hash"), request.get("max")
    if not isinstance(wanted, str) or not _HEX64.fullmatch(wanted):
        raise FrameError("request hash is not 64 lowercase hex digits")
    if not _is_size(max_size):
        raise FrameError(f"request max is not a size in 0..{MAX_PAYLOAD}")
    return wanted, max_size


def encode_request(wanted: str, max_size: int) -> bytes:
    """The REQ body parse_request reads back."""
    return msgpack.packb({"hash": wanted, "max": max_size})


def _reason(body: bytes) -> str:
    """An ERR body as one short printable line."""
    text = bytes(body[:200]).decode("utf-8", errors="replace")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split()) or "no reason given"


class Receiver:
    """The client's side of one fetch without the IO: frame heads and bodies in, checked payload out.

    Feed `body_length(head)` each 5-byte head, then `take(body)` with that many bytes; take returns
    the payload once a valid END arrived and hashes check out. Anything else raises FrameError before
    the body is read, so a hostile server cannot make the client buffer more than it asked for.
    """

    def __init__(self, wanted: str, expected_size: int, exact: bool = True):
        self.wanted, self.expected_size, self.exact = wanted, expected_size, exact
        self.announced: int | None = None
        self.buf = bytearray()
        self.hasher = hashlib.sha256()
        self.done = False
        self._kind: bytes | None = None

    def body_length(self, head: bytes) -> int:
        """Check the next frame head against the protocol state; how many body bytes to read."""
        if self.done or self._kind is not None:
            raise FrameError("frame after the end of the transfer")
        kind, length = parse_head(head)
        if kind == ERR:
            if length > _MAX_CONTROL:
                raise FrameError(f"error frame of {length} bytes")
        elif self.announced is None:
            if kind != HDR:
                raise FrameError(f"expected a header, got frame {kind!r}")
            if length > _MAX_CONTROL:
                raise FrameError(f"header frame of {length} bytes")
        elif kind == DATA:
            if length > CHUNK:
                raise FrameError(f"chunk of {length} bytes exceeds {CHUNK}")
            if len(self.buf) + length > self.announced:
                raise FrameError(f"peer sent more than the expected {self.announced} bytes")
        elif kind == END:
            if length != _END_LENGTH:
                raise FrameError("malformed END frame")
        else:
            raise FrameError(f"unexpected frame {kind!r}")
        self._kind = kind
        return length

    def take(self, body: bytes) -> bytes | None:
        """Consume the body of the frame last announced; the verified payload after END, else None."""
        kind, self._kind = self._kind, None
        if kind is None:
            raise FrameError("frame body without a head")
        if kind == ERR:
            raise FrameError("peer says: " + _reason(body))
        if kind == HDR:
            self.announced = self._parse_header(body)
            return None
        if kind == DATA:
            self.hasher.update(body)
            self.buf += body
            return None
        self.done = True
        return self._finish(body)

    def _parse_header(self, body: bytes) -> int:
        announced = _unpack_map(body, "header").get("size")
        if not _is_size(announced) or announced > self.expected_size or (
            self.exact and announced != self.expected_size
        ):
            shown = announced if _is_size(announced) else type(announced).__name__
            raise FrameError(f"peer offers {shown} bytes, expected {self.expected_size}")
        return announced

    def _finish(self, end: bytes) -> bytes:
        end_length, end_digest = int.from_bytes(end[:8], "big"), bytes(end[8:])
        if end_length != len(self.buf) or len(self.buf) != self.announced:
            raise FrameError(
                f"received {len(self.buf)} bytes, peer announced {self.announced} and ended at {end_length}"
            )
        digest = self.hasher.digest()
        if digest != end_digest:
            raise FrameError("bytes do not match the peer's own END hash (corrupted in transit)")
        if digest.hex() != self.wanted:
            raise FrameError(f"bytes hash to {digest.hex()[:12]}, not the requested hash")
        return bytes(self.buf)


# -- stream IO ----------------------------------------------------------------------------------


def _frame(kind: bytes, body: bytes | memoryview = b"") -> bytes:
    """Frame header (body written separately for large chunks to avoid a copy)."""
    return kind + len(body).to_bytes(4, "big")


async def _send(
    writer: asyncio.StreamWriter, kind: bytes, body: bytes | memoryview = b"", timeout: float | None = None
) -> None:
    writer.write(_frame(kind, body))
    if body:
        writer.write(body)
    await asyncio.wait_for(writer.drain(), timeout)


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    return parse_head(await reader.readexactly(_FRAME_HEAD))


def _peer_str(peer_id: PeerID | str) -> str:
    text = peer_id.to_base58() if isinstance(peer_id, PeerID) else str(peer_id)
    return text if len(text) <= 16 else text[:6] + ".." + text[-6:]


class PayloadServer:
    """Answers fetches for payloads that `lookup(hash)` returns (None: not held here).

    max_concurrent streams are served at once (the lookup loads a whole payload); a stream waits
    for one only after its request arrived. One peer id holds at most max_per_peer streams, and
    all peers together at most max_open (waiting for a request or a slot, or being served).
    """

    def __init__(
        self,
        p2p: P2P,
        lookup: Callable[[str], bytes | None],
        run_id: str,
        stats: TransferStats | None = None,
        max_concurrent: int = 8,
        *,
        max_per_peer: int = 4,
        max_open: int = 512,
        header_timeout: float = HEADER_TIMEOUT,
        io_timeout: float = IO_TIMEOUT,
        ack_timeout: float = ACK_TIMEOUT,
        slot_timeout: float = SLOT_TIMEOUT,
    ):
        self.p2p = p2p
        self.lookup = lookup
        self.name = protocol_name(run_id)
        self.stats = stats if stats is not None else TransferStats()
        self.max_per_peer, self.max_open = max_per_peer, max_open
        self.header_timeout, self.io_timeout = header_timeout, io_timeout
        self.ack_timeout, self.slot_timeout = ack_timeout, slot_timeout
        self._slots = asyncio.Semaphore(max_concurrent)
        self._per_peer: dict[str, int] = {}
        self._quiet: set[str] = set()
        self._open = 0
        self._started = False

    async def start(self) -> PayloadServer:
        """Register the stream handler with this peer's p2pd."""
        await self.p2p.add_binary_stream_handler(self.name, self._handle)
        self._started = True
        return self

    async def stop(self) -> None:
        """Unregister the handler (idempotent)."""
        if self._started:
            self._started = False
            with suppress(Exception):
                await self.p2p.remove_binary_stream_handler(self.name)

    def streams_of(self, peer_id: PeerID | str) -> int:
        """Streams this peer id holds open right now (for tests and the stats line)."""
        return self._per_peer.get(peer_id.to_base58() if isinstance(peer_id, PeerID) else str(peer_id), 0)

    async def _handle(self, info: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = info.peer_id.to_base58()
        peer = _peer_str(key)
        held = self._per_peer.get(key, 0)
        if held >= self.max_per_peer or self._open >= self.max_open:
            self.stats.refused += 1
            why = "too many streams from this peer" if held >= self.max_per_peer else "server busy"
            if key in self._quiet:  # one line per burst, not one per stream of a flood
                logger.debug("refused a stream from %s: %s", peer, why)
            else:
                logger.info("refused a stream from %s: %s (more while it holds %d: debug level)", peer, why, held)
                if held:
                    self._quiet.add(key)  # dropped with the peer's last stream
            with suppress(Exception):
                await _send(writer, ERR, why.encode(), timeout=1.0)
            writer.close()
            return
        self._per_peer[key] = held + 1
        self._open += 1
        try:
            await self._handle_counted(peer, reader, writer)
        finally:
            self._open -= 1
            left = self._per_peer.pop(key) - 1
            if left:
                self._per_peer[key] = left
            else:
                self._quiet.discard(key)
            writer.close()

    async def _handle_counted(self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.header_timeout):
                length = request_length(await reader.readexactly(_FRAME_HEAD))
                wanted, max_size = parse_request(await reader.readexactly(length))
        except (TimeoutError, asyncio.IncompleteReadError, FrameError, ConnectionError) as e:
            self.stats.refused += 1
            if isinstance(e, TimeoutError):
                why = f"no request within {self.header_timeout:g}s"
            elif isinstance(e, asyncio.IncompleteReadError):
                why = "stream closed before a full request"
            else:
                why = " ".join(str(e).split()) or type(e).__name__
            logger.info("refused a stream from %s: %s", peer, why)
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), self.slot_timeout)
        except TimeoutError:
            self._failed(peer, f"no free slot within {self.slot_timeout:g}s")
            with suppress(Exception):
                await _send(writer, ERR, b"server busy", timeout=1.0)
            return
        try:
            await self._serve(peer, wanted, max_size, reader, writer)
        except Exception as e:  # noqa: BLE001 - a broken client must never take the server down
            self._failed(peer, " ".join(str(e).split()) or type(e).__name__)
        finally:
            self._slots.release()

    def _failed(self, peer: str, why: str) -> None:
        """Count and log one failed serve (one line)."""
        self.stats.serve_failed += 1
        logger.info("serving %s failed: %s", peer, why)

    async def _serve(
        self, peer: str, wanted: str, max_size: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        data = await asyncio.get_running_loop().run_in_executor(None, self.lookup, wanted)
        if data is None:
            await _send(writer, ERR, b"not found", timeout=self.io_timeout)
            self.stats.serve_failed += 1
            return
        view = memoryview(data)
        if len(view) > max_size:
            await _send(writer, ERR, f"payload is {len(view)} bytes, over the asked maximum".encode(), self.io_timeout)
            self.stats.serve_failed += 1
            return
        # a client may read slowly, but not so slowly that it keeps a slot for much longer than the bytes need
        async with asyncio.timeout(self.io_timeout + self.ack_timeout + len(view) / MIN_RATE):
            await _send(writer, HDR, msgpack.packb({"size": len(view)}), self.io_timeout)
            hasher = hashlib.sha256()  # hashed as sent: overlaps with the network instead of a second pass
            for offset in range(0, len(view), CHUNK):
                chunk = view[offset : offset + CHUNK]
                hasher.update(chunk)
                await _send(writer, DATA, chunk, self.io_timeout)
                self.stats.bytes_out += len(chunk)
            await _send(writer, END, len(view).to_bytes(8, "big") + hasher.digest(), self.io_timeout)
            kind, _ = await asyncio.wait_for(_read_head(reader), self.ack_timeout)
        if kind != ACK:
            raise FrameError(f"expected ACK from {peer}, got frame {kind!r}")
        self.stats.served += 1


async def _connect(p2p: P2P, peer_id: PeerID, maddrs: Sequence[str | Multiaddr] | None) -> None:
    """Tell p2pd where the peer is when the caller knows (e.g. from its peers record).

    p2pd's connect refuses addresses that carry the /p2p/<id> suffix, so it is cut off here.
    """
    if maddrs:
        await p2p._client.connect(peer_id, [Multiaddr(str(m).split("/p2p/", 1)[0]) for m in maddrs])


async def _fetch(
    p2p: P2P,
    peer_id: PeerID,
    name: str,
    wanted: str,
    expected_size: int,
    exact: bool,
    stats: TransferStats,
    maddrs: Sequence[str | Multiaddr] | None,
) -> bytes:
    await _connect(p2p, peer_id, maddrs)
    _, reader, writer = await p2p.call_binary_stream_handler(peer_id, name)
    try:
        await _send(writer, REQ, encode_request(wanted, expected_size))
        receiver = Receiver(wanted, expected_size, exact)
        while True:
            length = receiver.body_length(await reader.readexactly(_FRAME_HEAD))
            before = len(receiver.buf)
            data = receiver.take(await reader.readexactly(length))
            stats.bytes_in += len(receiver.buf) - before
            if data is not None:
                break
        await _send(writer, ACK)
        return data
    finally:
        writer.close()


async def fetch(
    p2p: P2P,
    peer_id: PeerID | str,
    payload_hash: str,
    expected_size: int,
    timeout: float,
    *,
    run_id: str,
    stats: TransferStats | None = None,
    maddrs: Sequence[str | Multiaddr] | None = None,
    exact: bool = True,
) -> bytes:
    """Download one payload by hash from one peer; raises TransferError unless size and hash check out.

    exact=False accepts anything up to expected_size (for callers that only know a bound).
    """
    stats = stats if stats is not None else TransferStats()
    shown = _peer_str(peer_id)
    try:
        peer = PeerID.from_base58(peer_id) if isinstance(peer_id, str) else peer_id
        data = await asyncio.wait_for(
            _fetch(p2p, peer, protocol_name(run_id), payload_hash, expected_size, exact, stats, maddrs), timeout
        )
    except TimeoutError:
        stats.fetch_failed += 1
        raise TransferError(f"fetch {payload_hash[:12]} from {shown}: timed out after {timeout:g}s") from None
    except asyncio.IncompleteReadError as e:
        stats.fetch_failed += 1
        raise TransferError(
            f"fetch {payload_hash[:12]} from {shown}: stream closed after {len(e.partial)} of "
            f"{e.expected} bytes of a frame"
        ) from None
    except Exception as e:  # noqa: BLE001 - every failure becomes one TransferError line
        stats.fetch_failed += 1
        reason = " ".join(str(e).split()) or type(e).__name__
        raise TransferError(f"fetch {payload_hash[:12]} from {shown}: {reason}") from None
    stats.fetched += 1
    return data


async def fetch_any(
    p2p: P2P,
    peer_ids: Sequence[PeerID | str],
    payload_hash: str,
    expected_size: int,
    timeout: float,
    *,
    run_id: str,
    stats: TransferStats | None = None,
    maddrs: Mapping[str, Sequence[str | Multiaddr]] | None = None,
    exact: bool = True,
    deadline: float | None = None,
) -> bytes:
    """Try each peer holding the hash in turn (timeout is per peer); the first verified copy wins.

    deadline (event-loop time) cuts every try short and skips the rest once it passes.
    """
    loop = asyncio.get_running_loop()
    reasons = []
    for peer_id in peer_ids:
        left = timeout if deadline is None else min(timeout, deadline - loop.time())
        if left <= 0:
            reasons.append(f"{_peer_str(peer_id)} not tried: out of time")
            break
        key = peer_id.to_base58() if isinstance(peer_id, PeerID) else str(peer_id)
        try:
            return await fetch(
                p2p,
                peer_id,
                payload_hash,
                expected_size,
                left,
                run_id=run_id,
                stats=stats,
                maddrs=(maddrs or {}).get(key),
                exact=exact,
            )
        except TransferError as e:
            logger.info("%s; trying the next peer", e)
            reasons.append(str(e).split(" from ", 1)[-1])  # "<peer>: <reason>"
    if not reasons:
        raise TransferError(f"fetch {payload_hash[:12]}: no peer holds it")
    raise TransferError(f"fetch {payload_hash[:12]} from {len(reasons)} peer(s) failed: " + " | ".join(reasons))


@dataclass
class FetchRequest:
    """One payload a caller wants, by hash, from these peers (tried in turn)."""

    payload_hash: str
    expected_size: int
    peers: Sequence[str]
    exact: bool = True
    maddrs: Mapping[str, Sequence[str]] | None = None


@dataclass
class FetchResult:
    """What became of one FetchRequest: the verified bytes, or one line saying why not."""

    request: FetchRequest
    data: bytes | None = None
    error: str | None = None
    seconds: float = 0.0
    started: bool = field(default=False, repr=False)


async def fetch_many(
    p2p: P2P,
    requests: Sequence[FetchRequest],
    budget_s: float,
    max_parallel: int,
    *,
    timeout: float,
    run_id: str,
    stats: TransferStats | None = None,
) -> list[FetchResult]:
    """Fetch every request, at most max_parallel at once, started in the given order, all within budget_s.

    Each try at one peer gets at most `timeout`; whatever is still running when the budget is spent is
    cancelled. Never raises for a peer's failure: result i (same order as requests) holds the bytes
    or an error line, so one slow peer costs its own slot and nothing else.
    """
    loop = asyncio.get_running_loop()
    stats = stats if stats is not None else TransferStats()
    deadline = loop.time() + budget_s
    results = [FetchResult(r) for r in requests]
    pending = iter(results)  # shared by the workers: each takes the next request in the caller's order

    async def worker() -> None:
        for result in pending:
            req = result.request
            if loop.time() >= deadline:
                result.error = f"fetch {req.payload_hash[:12]}: not started, budget of {budget_s:g}s spent"
                continue
            result.started, start = True, loop.time()
            try:
                result.data = await fetch_any(
                    p2p, req.peers, req.payload_hash, req.expected_size, timeout, run_id=run_id,
                    stats=stats, maddrs=req.maddrs, exact=req.exact, deadline=deadline,
                )
            except TransferError as e:
                result.error = str(e)
            except Exception as e:  # noqa: BLE001 - one bad request must not cost the others
                result.error = f"fetch {str(req.payload_hash)[:12]}: " + (" ".join(str(e).split()) or type(e).__name__)
            finally:
                result.seconds = loop.time() - start

    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(max_parallel, len(results))))]
    _, late = await asyncio.wait(workers, timeout=max(deadline - loop.time(), 0.0))
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=5.0)  # cancelled fetches close their streams; never wait long on that
    for result in results:
        if result.data is None and result.error is None:
            if result.started:
                stats.fetch_failed += 1
            state = "cut off" if result.started else "not started"
            result.error = f"fetch {result.request.payload_hash[:12]}: {state}, budget of {budget_s:g}s spent"
    return results


class BackgroundLoop:
    """An event loop in a daemon thread, for synchronous peers that need P2P coroutines."""

    def __init__(self, name: str = "swarm-loop"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop and wait for it (cancelled on timeout)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and join its thread."""
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
