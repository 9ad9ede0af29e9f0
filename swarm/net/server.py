"""Serve payloads by content hash to other peers, so that an idle or greedy client cannot hold the server.

A stream takes one of the serving slots only after a valid request arrived within `header_timeout`, one
remote peer id holds at most `max_per_peer` streams at once (extra ones get ERR and are closed at once),
and every later read or write has a deadline. The server waits for the client's ACK before closing,
because a stream closed right after its last write sometimes lost that write (HIVEMIND_NOTES.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import msgpack
from hivemind.p2p import P2P, PeerID

from swarm.net.wire import (
    ACK,
    ACK_TIMEOUT,
    CHUNK,
    DATA,
    END,
    ERR,
    FRAME_HEAD,
    HDR,
    HEADER_TIMEOUT,
    IO_TIMEOUT,
    MIN_RATE,
    SLOT_TIMEOUT,
    FrameError,
    TransferStats,
    parse_request,
    peer_str,
    protocol_name,
    read_head,
    request_length,
    send_frame,
)

logger = logging.getLogger("swarm.net.transfer")


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
        peer = peer_str(key)
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
                await send_frame(writer, ERR, why.encode(), timeout=1.0)
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
                length = request_length(await reader.readexactly(FRAME_HEAD))
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
                await send_frame(writer, ERR, b"server busy", timeout=1.0)
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
            await send_frame(writer, ERR, b"not found", timeout=self.io_timeout)
            self.stats.serve_failed += 1
            return
        view = memoryview(data)
        if len(view) > max_size:
            why = f"payload is {len(view)} bytes, over the asked maximum"
            await send_frame(writer, ERR, why.encode(), self.io_timeout)
            self.stats.serve_failed += 1
            return
        # a client may read slowly, but not so slowly that it keeps a slot for much longer than the bytes need
        async with asyncio.timeout(self.io_timeout + self.ack_timeout + len(view) / MIN_RATE):
            await send_frame(writer, HDR, msgpack.packb({"size": len(view)}), self.io_timeout)
            hasher = hashlib.sha256()  # hashed as sent: overlaps with the network instead of a second pass
            for offset in range(0, len(view), CHUNK):
                chunk = view[offset : offset + CHUNK]
                hasher.update(chunk)
                await send_frame(writer, DATA, chunk, self.io_timeout)
                self.stats.bytes_out += len(chunk)
            await send_frame(writer, END, len(view).to_bytes(8, "big") + hasher.digest(), self.io_timeout)
            kind, _ = await asyncio.wait_for(read_head(reader), self.ack_timeout)
        if kind != ACK:
            raise FrameError(f"expected ACK from {peer}, got frame {kind!r}")
        self.stats.served += 1
