"""Serve and fetch byte payloads by content hash over hivemind's libp2p streams.

Wire format (one raw binary stream per fetch; every frame is 1 type byte + 4-byte
big-endian length + body):

    client -> server  REQ   msgpack {"hash": sha256 hex, "max": expected size}
    server -> client  HDR   msgpack {"size": n}         (or ERR utf-8 reason, then close)
    server -> client  DATA  <= 1 MiB of payload, repeated
    server -> client  END   8-byte length + 32-byte sha256 digest
    client -> server  ACK   empty; the server keeps the stream open until it arrives

The client refuses a frame before reading its body when it would take the total past
expected_size, and checks length and hash against both END and the requested hash. The
server waits for the ACK because a stream closed right after its last write sometimes
lost that write (HIVEMIND_NOTES.md). Raw streams run several times faster than
hivemind's protobuf streams and need no .proto file.

All functions are coroutines on the event loop that owns the P2P object (for a DHT,
`await dht.replicate_p2p()` in that loop); BackgroundLoop runs one for synchronous code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
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
ACK_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0

T = TypeVar("T")


@dataclass
class TransferStats:
    """Counters for the peer's stats line; one instance per server or client role."""

    bytes_in: int = 0
    bytes_out: int = 0
    fetched: int = 0
    fetch_failed: int = 0
    served: int = 0
    serve_failed: int = 0


def payload_hash(data: bytes | bytearray | memoryview) -> str:
    """The content hash payloads are asked for by (sha256 hex)."""
    return hashlib.sha256(data).hexdigest()


def protocol_name(run_id: str) -> str:
    """Stream protocol id; the run id keeps runs on one machine apart."""
    return f"/teft/{run_id}/payload/{PROTOCOL_VERSION}"


def _frame(kind: bytes, body: bytes | memoryview = b"") -> bytes:
    """Frame header (body written separately for large chunks to avoid a copy)."""
    return kind + len(body).to_bytes(4, "big")


async def _send(writer: asyncio.StreamWriter, kind: bytes, body: bytes | memoryview = b"") -> None:
    writer.write(_frame(kind, body))
    if body:
        writer.write(body)
    await writer.drain()


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    head = await reader.readexactly(_FRAME_HEAD)
    return head[:1], int.from_bytes(head[1:], "big")


def _peer_str(peer_id: PeerID | str) -> str:
    text = peer_id.to_base58() if isinstance(peer_id, PeerID) else str(peer_id)
    return text if len(text) <= 16 else text[:6] + ".." + text[-6:]


class PayloadServer:
    """Answers fetches for payloads that `lookup(hash)` returns (None: not held here)."""

    def __init__(
        self,
        p2p: P2P,
        lookup: Callable[[str], bytes | None],
        run_id: str,
        stats: TransferStats | None = None,
        max_concurrent: int = 8,
    ):
        self.p2p = p2p
        self.lookup = lookup
        self.name = protocol_name(run_id)
        self.stats = stats if stats is not None else TransferStats()
        self._slots = asyncio.Semaphore(max_concurrent)
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

    async def _handle(self, info: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_str(info.peer_id)
        try:
            async with self._slots:
                await asyncio.wait_for(self._serve(peer, reader, writer), REQUEST_TIMEOUT + ACK_TIMEOUT + 600)
        except Exception as e:  # noqa: BLE001 - a broken client must never take the server down
            self.stats.serve_failed += 1
            logger.info("serving %s failed: %s", peer, e or type(e).__name__)
        finally:
            writer.close()

    async def _serve(self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kind, length = await asyncio.wait_for(_read_head(reader), REQUEST_TIMEOUT)
        if kind != REQ or length > _MAX_CONTROL:
            raise ValueError("bad request frame")
        request = msgpack.unpackb(await asyncio.wait_for(reader.readexactly(length), REQUEST_TIMEOUT))
        wanted = str(request.get("hash", ""))
        data = await asyncio.get_running_loop().run_in_executor(None, self.lookup, wanted)
        if data is None:
            await _send(writer, ERR, b"not found")
            self.stats.serve_failed += 1
            return
        view = memoryview(data)
        max_size = request.get("max")
        if isinstance(max_size, int) and len(view) > max_size:
            await _send(writer, ERR, f"payload is {len(view)} bytes, over the asked maximum".encode())
            self.stats.serve_failed += 1
            return
        await _send(writer, HDR, msgpack.packb({"size": len(view)}))
        hasher = hashlib.sha256()  # hashed as sent: overlaps with the network instead of a second pass
        for offset in range(0, len(view), CHUNK):
            chunk = view[offset : offset + CHUNK]
            hasher.update(chunk)
            await _send(writer, DATA, chunk)
            self.stats.bytes_out += len(chunk)
        await _send(writer, END, len(view).to_bytes(8, "big") + hasher.digest())
        kind, length = await asyncio.wait_for(_read_head(reader), ACK_TIMEOUT)
        if kind != ACK:
            raise ValueError(f"expected ACK from {peer}, got frame {kind!r}")
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
        await _send(writer, REQ, msgpack.packb({"hash": wanted, "max": expected_size}))
        kind, length = await _read_head(reader)
        if length > _MAX_CONTROL and kind != DATA:
            raise ValueError(f"control frame of {length} bytes")
        if kind == ERR:
            raise ValueError("peer says: " + (await reader.readexactly(length)).decode(errors="replace"))
        if kind != HDR:
            raise ValueError(f"expected a header, got frame {kind!r}")
        announced = msgpack.unpackb(await reader.readexactly(length)).get("size")
        if not isinstance(announced, int) or announced > expected_size or (exact and announced != expected_size):
            raise ValueError(f"peer offers {announced} bytes, expected {expected_size}")
        buf = bytearray()
        hasher = hashlib.sha256()
        while True:
            kind, length = await _read_head(reader)
            if kind == DATA:
                if length > CHUNK:
                    raise ValueError(f"chunk of {length} bytes exceeds {CHUNK}")
                if len(buf) + length > expected_size:
                    raise ValueError(f"peer sent more than the expected {expected_size} bytes")
                chunk = await reader.readexactly(length)
                hasher.update(chunk)
                buf += chunk
                stats.bytes_in += length
            elif kind == END:
                if length != 40:
                    raise ValueError("malformed END frame")
                end = await reader.readexactly(length)
                break
            elif kind == ERR and length <= _MAX_CONTROL:
                raise ValueError("peer says: " + (await reader.readexactly(length)).decode(errors="replace"))
            else:
                raise ValueError(f"unexpected frame {kind!r}")
        end_length, end_digest = int.from_bytes(end[:8], "big"), end[8:]
        if end_length != len(buf) or len(buf) != announced:
            raise ValueError(f"received {len(buf)} bytes, peer announced {announced} and ended at {end_length}")
        digest = hasher.digest()
        if digest != end_digest:
            raise ValueError("bytes do not match the peer's own END hash (corrupted in transit)")
        if digest.hex() != wanted:
            raise ValueError(f"bytes hash to {digest.hex()[:12]}, not the requested hash")
        await _send(writer, ACK)
        return bytes(buf)
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
    peer = PeerID.from_base58(peer_id) if isinstance(peer_id, str) else peer_id
    stats = stats if stats is not None else TransferStats()
    try:
        data = await asyncio.wait_for(
            _fetch(p2p, peer, protocol_name(run_id), payload_hash, expected_size, exact, stats, maddrs), timeout
        )
    except TimeoutError:
        stats.fetch_failed += 1
        raise TransferError(f"fetch {payload_hash[:12]} from {_peer_str(peer)}: timed out after {timeout:g}s") from None
    except asyncio.IncompleteReadError as e:
        stats.fetch_failed += 1
        raise TransferError(
            f"fetch {payload_hash[:12]} from {_peer_str(peer)}: stream closed after {len(e.partial)} of "
            f"{e.expected} bytes of a frame"
        ) from None
    except Exception as e:  # noqa: BLE001 - every failure becomes one TransferError line
        stats.fetch_failed += 1
        reason = " ".join(str(e).split()) or type(e).__name__
        raise TransferError(f"fetch {payload_hash[:12]} from {_peer_str(peer)}: {reason}") from None
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
    maddrs: dict[str, Sequence[str | Multiaddr]] | None = None,
    exact: bool = True,
) -> bytes:
    """Try each peer holding the hash in turn (timeout is per peer); the first verified copy wins."""
    reasons = []
    for peer_id in peer_ids:
        key = peer_id.to_base58() if isinstance(peer_id, PeerID) else str(peer_id)
        try:
            return await fetch(
                p2p,
                peer_id,
                payload_hash,
                expected_size,
                timeout,
                run_id=run_id,
                stats=stats,
                maddrs=(maddrs or {}).get(key),
                exact=exact,
            )
        except TransferError as e:
            logger.info("%s; trying the next peer", e)
            reasons.append(str(e).split(": ", 1)[-1])
    if not reasons:
        raise TransferError(f"fetch {payload_hash[:12]}: no peer holds it")
    raise TransferError(f"fetch {payload_hash[:12]} from {len(reasons)} peer(s) failed: " + " | ".join(reasons))


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
