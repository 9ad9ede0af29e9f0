"""The payload wire format: frames, the request, and the pure decoders of what the network sends.

One raw binary stream per fetch; every frame is 1 type byte + 4-byte big-endian length + body:

    client -> server  REQ   msgpack {"hash": sha256 hex, "max": expected size}
                            (+ "offset", "length": one range of it; or + "pieces": true, its piece manifest)
    server -> client  HDR   msgpack {"size": n}         (or ERR utf-8 reason, then close)
    server -> client  DATA  <= 1 MiB of payload, repeated (a range: one piece per frame, swarm/net/pieces.py)
    server -> client  END   8-byte length + 32-byte sha256 digest (of what was sent)
    client -> server  ACK   empty; the server keeps the stream open until it arrives

Bytes from the network are decoded only by the pure `parse_request` (server) and `Receiver` (client),
which raise FrameError for anything else: the fuzz tests drive exactly these.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from hivemind.p2p import PeerID

from teft.files import content_hash as payload_hash  # noqa: E402,F401 - the hash payloads are asked for by

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
PROTOCOL_VERSION = 1
REQ, HDR, DATA, END, ERR, ACK = b"Q", b"H", b"D", b"E", b"X", b"A"
FRAME_HEAD = 5
_MAX_CONTROL = 4096
_END_LENGTH = 40
# ERR bodies for a payload not held: never heard of; on its way here (a validator relays it once it lands);
# this peer tried to fetch it and could not
NOT_FOUND, NOT_YET, GAVE_UP = "not found", "not yet", "could not get it either"
MAX_PAYLOAD = 1 << 40  # sizes above this in a request or header are malformed, not just large
HEADER_TIMEOUT = 3.0  # the whole request must arrive within this, before the stream may take a slot
IO_TIMEOUT = 10.0  # the longest any single control frame (ERR) may take to write
ACK_TIMEOUT = 2.5  # after END: an honest client ACKs within milliseconds (its hash is computed as bytes arrive)
SLOT_TIMEOUT = 5.0  # a valid request waits this long for a free slot, then gets ERR "busy"
MIN_RATE = 256 * 1024  # bytes/s: a client reading slower than this on average loses its slot
RATE_GRACE = 2.0  # seconds on top of size / MIN_RATE for the whole HDR..END, before the rate counts
STALL_TIMEOUT = 2.0  # a payload write that makes no progress for this long ends the stream (reader stopped)
WRITE_PIECE = 64 * 1024  # payload bytes are handed to p2pd this many at a time, each under STALL_TIMEOUT (256 KiB
#                          pieces took over 2 s through a 4 Mbit/s home uplink serving 2 validators with 1% loss:
#                          the stall rule cut honest streams in the network lab; 64 KiB is under 2 s down to 32 KB/s)
PRIORITY_STALL_TIMEOUT = 6.0  # the same, and the ACK deadline, for an allowlisted validator (a home uplink)
PRIORITY_LANE = 2  # serving slots reserved for each priority (allowlisted validator) peer, on top of the pool
BUDGET_WINDOW_S = 600.0  # rolling window of the per-reader byte budgets (a peer passes its cycle length)
BUDGET_PER_PEER = 8  # copies of what it reads (a payload, the pack) one non-priority peer id may take per window
BUDGET_PER_ADDRESS = 64  # the same for all non-priority peers behind one source address (IPv6: one /64)
LOG_BURST_S = 10.0  # a repeated refusal or failure from one source costs one INFO line this often, the rest debug
_HEX64 = re.compile(r"[0-9a-f]{64}")



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
    refused: int = 0  # streams closed before a slot: over a stream cap or the byte budget, no/bad request
    busy_in: float = 0.0  # seconds at least one fetch was moving bytes in (overlapping fetches counted once)
    busy_out: float = 0.0  # the same for serving: bytes / busy seconds is what the link carried while in use
    _active: dict = field(default_factory=lambda: {"in": [0, 0.0], "out": [0, 0.0]}, repr=False)

    def begin(self, way: str) -> None:
        """A transfer `way` ("in" or "out") starts moving bytes (calls come from one event loop)."""
        count, _ = self._active[way]
        self._active[way] = [count + 1, time.monotonic() if count == 0 else self._active[way][1]]

    def end(self, way: str) -> None:
        count, since = self._active[way]
        self._active[way] = [count - 1, since]
        if count == 1:
            setattr(self, f"busy_{way}", getattr(self, f"busy_{way}") + time.monotonic() - since)

    def busy(self, way: str) -> float:
        """Busy seconds so far, the transfers still running included."""
        count, since = self._active[way]
        return getattr(self, f"busy_{way}") + (time.monotonic() - since if count else 0.0)


def protocol_name(run_id: str) -> str:
    """Stream protocol id; the run id keeps runs on one machine apart."""
    return f"/teft/{run_id}/payload/{PROTOCOL_VERSION}"


# -- pure decoding of what the network sends ----------------------------------------------------


def parse_head(head: bytes) -> tuple[bytes, int]:
    """(kind, body length) of a 5-byte frame head."""
    if len(head) != FRAME_HEAD:
        raise FrameError(f"frame head of {len(head)} bytes, not {FRAME_HEAD}")
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


@dataclass(frozen=True)
class Request:
    """What a REQ asks for: the object `hash` (at most `max` bytes), all of it, `length` bytes of it from
    `offset` (a range of pieces), or its piece manifest (`pieces`)."""

    hash: str
    max: int
    offset: int | None = None
    length: int | None = None
    pieces: bool = False


def parse_request(body: bytes) -> Request:
    """The Request in a REQ body; FrameError unless it is a map with a sha256 hex and a size, and at most one of
    a range (offset and length, both sizes) or the piece manifest."""
    request = _unpack_map(body, "request")
    wanted, max_size = request.get("hash"), request.get("max")
    if not isinstance(wanted, str) or not _HEX64.fullmatch(wanted):
        raise FrameError("request hash is not 64 lowercase hex digits")
    if not _is_size(max_size):
        raise FrameError(f"request max is not a size in 0..{MAX_PAYLOAD}")
    offset, length, pieces = request.get("offset"), request.get("length"), request.get("pieces", False)
    if (offset is None) != (length is None):
        raise FrameError("a range needs both offset and length")
    if offset is not None and not (_is_size(offset) and _is_size(length)):
        raise FrameError(f"range offset and length are not sizes in 0..{MAX_PAYLOAD}")
    if pieces is not False and (pieces is not True or offset is not None):
        raise FrameError("pieces must be true, and not with a range")
    return Request(wanted, max_size, offset, length, pieces)


def encode_request(wanted: str, max_size: int, *, offset: int | None = None, length: int | None = None,
                   pieces: bool = False) -> bytes:
    """The REQ body parse_request reads back."""
    body: dict[str, Any] = {"hash": wanted, "max": max_size}
    if offset is not None:
        body.update(offset=offset, length=length)
    if pieces:
        body["pieces"] = True
    return msgpack.packb(body)


def _reason(body: bytes) -> str:
    """An ERR body as one short printable line."""
    text = bytes(body[:200]).decode("utf-8", errors="replace")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split()) or "no reason given"


class Receiver:
    """The client's side of one fetch without the IO: frame heads and bodies in, checked payload out.

    Feed `body_length(head)` each 5-byte head, then `take(body)` with that many bytes; take returns
    the payload once a valid END arrived and hashes check out. Anything else raises FrameError before
    the body is read, so a hostile server cannot make the client buffer more than it asked for.

    A range of pieces (`pieces`: the digests its pieces must have, `piece_size` each but the object's last)
    is checked piece by piece instead: every DATA frame must be the next whole piece and hash to its digest,
    and is handed to `on_piece(i, bytes)` at once (nothing is buffered), so a bad piece costs one piece and
    every piece before it is kept. take then returns b"" at END.
    """

    def __init__(self, wanted: str | None, expected_size: int, exact: bool = True, *,
                 pieces: list[bytes] | None = None, piece_size: int = CHUNK,
                 on_piece: Callable[[int, bytes], None] | None = None):
        self.wanted, self.expected_size, self.exact = wanted, expected_size, exact
        self.pieces, self.piece_size, self.on_piece = pieces, piece_size, on_piece
        self.announced: int | None = None
        self.buf = bytearray()
        self.received = 0
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
            if self.received + length > self.announced:
                raise FrameError(f"peer sent more than the expected {self.announced} bytes")
            if self.pieces is not None and length != min(self.piece_size, self.announced - self.received):
                raise FrameError(f"a {length}-byte frame is not the next whole piece")
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
            if self.pieces is not None:
                index = self.received // self.piece_size
                if hashlib.sha256(body).digest() != self.pieces[index]:
                    raise FrameError(f"piece {index} of the range does not match the piece manifest")
                if self.on_piece is not None:
                    self.on_piece(index, bytes(body))
            else:
                self.buf += body
            self.received += len(body)
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
        if end_length != self.received or self.received != self.announced:
            raise FrameError(
                f"received {self.received} bytes, peer announced {self.announced} and ended at {end_length}"
            )
        digest = self.hasher.digest()
        if digest != end_digest:
            raise FrameError("bytes do not match the peer's own END hash (corrupted in transit)")
        if self.pieces is not None:  # every piece was checked on arrival
            return b""
        if digest.hex() != self.wanted:
            raise FrameError(f"bytes hash to {digest.hex()[:12]}, not the requested hash")
        return bytes(self.buf)


# -- stream IO ----------------------------------------------------------------------------------


def _frame(kind: bytes, body: bytes | memoryview = b"") -> bytes:
    """Frame header (body written separately for large chunks to avoid a copy)."""
    return kind + len(body).to_bytes(4, "big")


async def send_frame(
    writer: asyncio.StreamWriter, kind: bytes, body: bytes | memoryview = b"", timeout: float | None = None
) -> None:
    writer.write(_frame(kind, body))
    if body:
        writer.write(body)
    await asyncio.wait_for(writer.drain(), timeout)


async def read_head(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    return parse_head(await reader.readexactly(FRAME_HEAD))


def source_address(maddr: Any) -> str:
    """The part of a stream's remote multiaddr that limits are counted by: the IPv4 address, the IPv6 /64
    (one host gets a whole /64, so counting single v6 addresses would count nothing), else the text itself.

    A relayed stream shows the relay's address, so every peer behind one relay shares one count."""
    parts = str(maddr).split("/")
    for kind, value in zip(parts, parts[1:], strict=False):
        if kind == "ip4":
            return value
        if kind == "ip6":
            try:
                return str(ipaddress.ip_network(f"{value}/64", strict=False))
            except ValueError:
                return value
        if kind in ("dns", "dns4", "dns6"):
            return value
    return str(maddr)[:100] or "unknown"


def peer_str(peer_id: PeerID | str) -> str:
    text = peer_id.to_base58() if isinstance(peer_id, PeerID) else str(peer_id)
    return text if len(text) <= 16 else text[:6] + ".." + text[-6:]
