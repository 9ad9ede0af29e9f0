"""Serve payloads by content hash to other peers, so that no reader, and no number of free keys, can hold the server.

What a stream may cost, in the order the server checks it:

- Open streams. One peer id holds at most `max_per_peer` streams at once; all non-priority peers behind one
  source address (an IPv4 address, an IPv6 /64) at most `max_per_address`, and all non-priority peers
  together at most `max_open`. A stream over a cap gets ERR and is closed at once.
- The request must arrive within `header_timeout`, before the stream may wait for anything.
- Bytes. A non-priority reader has a budget over a rolling window (`budget_window_s`, a peer passes its
  cycle length), per peer id (`budget_per_peer`) and per source address (`budget_per_address`), counted in
  copies of what it reads: a whole payload costs one, a range of it its share, the miner pack one too (a
  budget in bytes of the largest object served gave every stranger 19 payloads per pack once the pack was
  served); once spent, it gets ERR "budget spent" at once.
- Serving slots. `max_concurrent` general slots, of which the non-priority peers behind one source address
  hold at most `max_address_slots` (half) at once; each priority peer (an allowlisted validator: they are
  known, while keys are free to everyone else) has `priority_lane` slots of its own on top, and takes a
  free general slot too when its lane is full, so no number of strangers holds a slot a validator needs.
- Time. A slot is held only while bytes move: a write that makes no progress for `stall_timeout` ends
  the stream, so a reader that stops taking bytes loses its slot within seconds; and a non-priority
  reader's HDR..END must go at `min_rate` on average after `rate_grace`. Priority peers are exempt from
  that average: a miner on a home uplink sends every validator its copy at once, and in the network lab
  two validators sharing a 4 Mbit/s uplink got 250 KB/s each, under the 256 KiB/s floor, so the miner cut
  its own validators off; and their stall deadline is PRIORITY_STALL_TIMEOUT (a 64 KiB write through
  a lossy home uplink on a loaded machine still stalled over 2 s there). A slow allowlisted validator holds its own
  lane and, with `max_per_peer` streams at most, two general slots. The slot is given back at END; the
  stream then waits at most `ack_timeout` for the client's ACK before it is closed (a stream closed right
  after its last write sometimes lost that write: HIVEMIND_NOTES.md), holding no slot meanwhile.

Why the per-address slot cap is half the pool, not less: on one machine (simulations, the tests) or
behind one NAT every peer shares an address, attacker and honest miners alike, so a per-address limit
cannot tell them apart there. Half the slots bounds what one address takes from all the others; inside one
address, slots go first to the peer id holding the fewest, held slots are short (rate and ACK deadlines),
and the per-peer budget caps each key, so an honest miner that shares its address with slow readers is
still served, later. What it is not protected from on that address is a stranger with enough keys to
spend the whole address's budget (then this server refuses that address until the window drains; the
miner's other holders each have their own). Validators are exempt from every per-address limit and budget:
nothing any number of strangers does, from any address, keeps a validator from the payloads it scores.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any

import msgpack
from hivemind.p2p import P2P, PeerID

from swarm.net.pieces import manifest_size, piece_manifest
from swarm.net.wire import (
    ACK,
    ACK_TIMEOUT,
    BUDGET_PER_ADDRESS,
    BUDGET_PER_PEER,
    BUDGET_WINDOW_S,
    CHUNK,
    DATA,
    END,
    ERR,
    FRAME_HEAD,
    GAVE_UP,
    HDR,
    HEADER_TIMEOUT,
    IO_TIMEOUT,
    LOG_BURST_S,
    MIN_RATE,
    NOT_FOUND,
    NOT_YET,
    PRIORITY_LANE,
    PRIORITY_STALL_TIMEOUT,
    RATE_GRACE,
    SLOT_TIMEOUT,
    STALL_TIMEOUT,
    WRITE_PIECE,
    FrameError,
    Request,
    TransferStats,
    parse_request,
    peer_str,
    protocol_name,
    read_head,
    request_length,
    send_frame,
    source_address,
)

logger = logging.getLogger("swarm.net.transfer")

_GENERAL, _LANE = "general", "lane"
# piece manifests kept, enough for every object a peer holds at once (64 payloads, a few checkpoints, the pack): a
# manifest costs a pass over its object, and a reader cycling through more objects than are kept would otherwise
# make the server hash GBs again for each request of a few bytes
MANIFESTS_KEPT = 256


class _Slots:
    """The serving slots: a general pool, of which one source address holds at most `per_address` for its
    non-priority peers, and a lane of `lane` slots per priority peer (which also takes a free general slot when
    its lane is full). Waiters are granted priority peers first, then the peer id holding the fewest slots,
    then in arrival order: a key with many streams waiting does not go ahead of one with a single stream."""

    def __init__(self, general: int, per_address: int, lane: int):
        self.free, self.per_address, self.lane = general, per_address, lane
        self.by_address: dict[str, int] = {}
        self.by_peer: dict[str, int] = {}
        self.lanes: dict[str, int] = {}
        self._waiting: list[tuple[asyncio.Future, str, str, bool, int]] = []
        self._arrivals = 0

    def _take(self, key: str, address: str, priority: bool) -> str | None:
        if priority and self.lanes.get(key, 0) < self.lane:
            self.lanes[key] = self.lanes.get(key, 0) + 1
            return _LANE
        if self.free > 0 and (priority or self.by_address.get(address, 0) < self.per_address):
            self.free -= 1
            self.by_peer[key] = self.by_peer.get(key, 0) + 1
            if not priority:
                self.by_address[address] = self.by_address.get(address, 0) + 1
            return _GENERAL
        return None

    async def acquire(self, key: str, address: str, priority: bool) -> str:
        """A slot token for release(); waits (cancel it to stop waiting) while none may be taken."""
        token = self._take(key, address, priority)
        if token is not None:
            return token
        self._arrivals += 1
        entry = (asyncio.get_running_loop().create_future(), key, address, priority, self._arrivals)
        self._waiting.append(entry)
        try:
            return await entry[0]
        except BaseException:
            if entry[0].done() and not entry[0].cancelled():  # granted just as the wait was cancelled
                self.release(entry[0].result(), key, address, priority)
            raise
        finally:
            with suppress(ValueError):
                self._waiting.remove(entry)

    def release(self, token: str, key: str, address: str, priority: bool) -> None:
        if token == _LANE:
            self.lanes[key] -= 1
            if not self.lanes[key]:
                del self.lanes[key]
        else:
            self.free += 1
            self.by_peer[key] -= 1
            if not self.by_peer[key]:
                del self.by_peer[key]
            if not priority:
                self.by_address[address] -= 1
                if not self.by_address[address]:
                    del self.by_address[address]
        self._grant()

    def _grant(self) -> None:
        while True:
            waiting = [e for e in self._waiting if not e[0].done()]
            waiting.sort(key=lambda e: (not e[3], self.by_peer.get(e[1], 0), e[4]))
            for future, key, address, priority, _ in waiting:
                token = self._take(key, address, priority)
                if token is not None:
                    future.set_result(token)
                    break
            else:
                return


class _Budget:
    """Copies taken per key over a rolling window, kept as a leaky bucket: what was taken drains away at
    capacity / window per second, so a key never takes more than its capacity plus that drain in any window."""

    def __init__(self, window: float):
        self.window = max(window, 1e-3)
        self._level: dict[str, tuple[float, float]] = {}

    def used(self, key: str, capacity: float, now: float) -> float:
        level, since = self._level.get(key, (0.0, now))
        return max(level - capacity * (now - since) / self.window, 0.0)

    def fits(self, key: str, n: float, capacity: float, now: float) -> bool:
        return self.used(key, capacity, now) + n <= capacity

    def charge(self, key: str, n: float, capacity: float, now: float) -> None:
        self._level[key] = (self.used(key, capacity, now) + n, now)
        if len(self._level) > 4096:  # keys that drained to nothing carry no information: forget them
            self._level = {k: v for k, v in self._level.items() if self.used(k, capacity, now) > 0}


class _Bursts:
    """One INFO line per source and kind of trouble every `every` seconds; the rest of a burst at debug level,
    counted in the next INFO line. A flood of streams costs a few lines, not one per stream."""

    def __init__(self, every: float):
        self.every = every
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def log(self, kind: str, source: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last, hidden = self._last.get((kind, source), (-float("inf"), 0))
        if now - last < self.every:
            self._last[(kind, source)] = (last, hidden + 1)
            logger.debug(message, *args)
            return
        if len(self._last) > 1024:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.every}
        self._last[(kind, source)] = (now, 0)
        more = f" ({hidden} more like it in the last {now - last:.0f}s at debug level)" if hidden else ""
        logger.info(message + more + "; more within %gs: debug level", *args, self.every)


class PayloadServer:
    """Answers fetches for payloads that `lookup(hash)` returns (None: not held here).

    `priority` holds the peer ids (base58) served from reserved lanes and exempt from the per-address caps
    and the budgets: the allowlisted validators. Everything else is in the module docstring.
    """

    def __init__(
        self,
        p2p: P2P,
        lookup: Callable[[str], bytes | None],
        run_id: str,
        stats: TransferStats | None = None,
        max_concurrent: int = 8,
        *,
        priority: Iterable[str] = (),
        max_per_peer: int = 4,
        max_open: int = 512,
        max_per_address: int | None = None,
        max_address_slots: int | None = None,
        priority_lane: int = PRIORITY_LANE,
        header_timeout: float = HEADER_TIMEOUT,
        io_timeout: float = IO_TIMEOUT,
        ack_timeout: float = ACK_TIMEOUT,
        slot_timeout: float = SLOT_TIMEOUT,
        stall_timeout: float = STALL_TIMEOUT,
        min_rate: float = MIN_RATE,
        rate_grace: float = RATE_GRACE,
        budget_window_s: float = BUDGET_WINDOW_S,
        budget_per_peer: float = BUDGET_PER_PEER,
        budget_per_address: float = BUDGET_PER_ADDRESS,
    ):
        self.p2p = p2p
        self.lookup = lookup
        self.name = protocol_name(run_id)
        self.stats = stats if stats is not None else TransferStats()
        self.priority = frozenset(str(p) for p in priority)
        self.max_per_peer, self.max_open = max_per_peer, max_open
        self.max_per_address = max_per_address if max_per_address is not None else max(max_per_peer, max_open // 2)
        self.header_timeout, self.io_timeout = header_timeout, io_timeout
        self.ack_timeout, self.slot_timeout = ack_timeout, slot_timeout
        self.stall_timeout, self.min_rate, self.rate_grace = stall_timeout, min_rate, rate_grace
        self.budget_per_peer, self.budget_per_address = budget_per_peer, budget_per_address
        address_slots = max_address_slots if max_address_slots is not None else max(1, max_concurrent // 2)
        self._slots = _Slots(max_concurrent, address_slots, priority_lane)
        self._budget = _Budget(budget_window_s)
        self._per_peer: dict[str, int] = {}
        self._per_address: dict[str, int] = {}
        self._quiet: set[str] = set()
        self._bursts = _Bursts(LOG_BURST_S)
        self._open = 0
        self._started = False
        # what this peer's evaluate phase fetches (fetchmany.fetch_stream): hash -> True while on its way, False
        # once the fetch failed. Asked for one, it answers "not yet" or "could not get it either" rather than
        # "not found", so a validator waiting for it to relay a payload waits only while the payload may come
        self.pending: dict[str, bool] = {}
        self._manifests: dict[str, bytes] = {}  # piece manifests of recently asked objects, oldest first

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

    def streams_from(self, address: str) -> int:
        """Streams the non-priority peers behind this source address hold open right now."""
        return self._per_address.get(address, 0)

    def budget_used(self, peer_or_address: PeerID | str) -> float:
        """Copies charged to a peer id (or "@" + a source address) and not yet drained from its window."""
        key = peer_or_address.to_base58() if isinstance(peer_or_address, PeerID) else str(peer_or_address)
        capacity = self.budget_per_address if key.startswith("@") else self.budget_per_peer
        return self._budget.used(key, capacity, time.monotonic())

    def _over_budget(self, key: str, address: str, copies: float) -> str | None:
        """Why `copies` more would take this peer or its address past its budget; None if they fit."""
        now = time.monotonic()
        if not self._budget.fits(key, copies, self.budget_per_peer, now):
            return "budget spent by this peer"
        if not self._budget.fits("@" + address, copies, self.budget_per_address, now):
            return "budget spent by this address"
        return None

    async def _handle(self, info: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = info.peer_id.to_base58()
        address = source_address(getattr(info, "addr", ""))
        priority = key in self.priority
        peer = peer_str(key)
        held = self._per_peer.get(key, 0)
        if held >= self.max_per_peer or (not priority and self._open >= self.max_open):
            self.stats.refused += 1
            why = "too many streams from this peer" if held >= self.max_per_peer else "server busy"
            if key in self._quiet:  # one line per burst, not one per stream of a flood
                logger.debug("refused a stream from %s: %s", peer, why)
            else:
                logger.info("refused a stream from %s: %s (more while it holds %d: debug level)", peer, why, held)
                if held:
                    self._quiet.add(key)  # dropped with the peer's last stream
            await self._refuse(writer, why)
            return
        if not priority and self._per_address.get(address, 0) >= self.max_per_address:
            self.stats.refused += 1
            why = "too many streams from this address"
            self._bursts.log("address", address, "refused a stream from %s at %s: %s", peer, address, why)
            await self._refuse(writer, why)
            return
        self._per_peer[key] = held + 1
        if not priority:
            self._open += 1
            self._per_address[address] = self._per_address.get(address, 0) + 1
        try:
            await self._handle_counted(key, address, priority, peer, reader, writer)
        finally:
            if not priority:
                self._open -= 1
                left = self._per_address.pop(address) - 1
                if left:
                    self._per_address[address] = left
            left = self._per_peer.pop(key) - 1
            if left:
                self._per_peer[key] = left
            else:
                self._quiet.discard(key)
            writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, why: str) -> None:
        with suppress(Exception):
            await send_frame(writer, ERR, why.encode(), timeout=1.0)
        writer.close()

    async def _handle_counted(
        self, key: str, address: str, priority: bool, peer: str, reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            async with asyncio.timeout(self.header_timeout):
                length = request_length(await reader.readexactly(FRAME_HEAD))
                request = parse_request(await reader.readexactly(length))
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
        asked = request.length if request.length is not None else (
            manifest_size(request.max) if request.pieces else request.max)
        if not priority and (why := self._over_budget(key, address, min(asked / max(request.max, 1), 1.0))):
            self._refused_budget(peer, address, why)  # before a slot: a spent reader costs nothing more
            await self._refuse(writer, why)
            return
        try:
            token = await asyncio.wait_for(self._slots.acquire(key, address, priority), self.slot_timeout)
        except TimeoutError:
            self._failed(peer, address, priority, f"no free slot within {self.slot_timeout:g}s")
            await self._refuse(writer, "server busy")
            return
        ended = False
        self.stats.begin("out")  # busy until the ACK: p2pd buffers about 1 MiB, so END leaves before the bytes do
        try:
            ended = await self._send(key, address, priority, peer, request, writer)
        except Exception as e:  # noqa: BLE001 - a broken client must never take the server down
            self._failed(peer, address, priority, " ".join(str(e).split()) or type(e).__name__)
        finally:
            self._slots.release(token, key, address, priority)  # at END: waiting for the ACK takes no slot
            if not ended:
                self.stats.end("out")
        if not ended:
            return
        # p2pd holds about 1 MiB of what was written: through a home uplink shared by 2 validators that took
        # over 2.5 s to drain before the ACK could come (network lab), so validators get the stall deadline here
        ack_timeout = self.ack_timeout if not priority else max(self.ack_timeout, PRIORITY_STALL_TIMEOUT)
        try:
            kind, _ = await asyncio.wait_for(read_head(reader), ack_timeout)
        except TimeoutError:
            self._failed(peer, address, priority, f"no ACK within {ack_timeout:g}s of END")
            return
        except Exception as e:  # noqa: BLE001 - closed or reset instead of an ACK
            self._failed(peer, address, priority, "no ACK: " + (" ".join(str(e).split()) or type(e).__name__))
            return
        finally:
            self.stats.end("out")
        if kind != ACK:
            self._failed(peer, address, priority, f"expected ACK, got frame {kind!r}")
            return
        self.stats.served += 1

    def _refused_budget(self, peer: str, address: str, why: str) -> None:
        self.stats.refused += 1
        self._bursts.log("budget", address, "refused %s at %s: %s", peer, address, why)

    def _failed(self, peer: str, address: str, priority: bool, why: str) -> None:
        """Count and log one failed serve: one line for a validator, one per burst for everyone else."""
        self.stats.serve_failed += 1
        if priority:
            logger.info("serving %s failed: %s", peer, why)
        else:
            self._bursts.log("failed", address, "serving %s at %s failed: %s", peer, address, why)

    def _manifest(self, digest: str, data: bytes) -> bytes:
        """The piece manifest of a held object, computed once per object while it stays among the MANIFESTS_KEPT."""
        body = self._manifests.pop(digest, None) or piece_manifest(data)
        self._manifests[digest] = body
        while len(self._manifests) > MANIFESTS_KEPT:
            self._manifests.pop(next(iter(self._manifests)))
        return body

    async def _send(
        self, key: str, address: str, priority: bool, peer: str, request: Request, writer: asyncio.StreamWriter,
    ) -> bool:
        """HDR, DATA..., END under the rate and stall deadlines; True once END is written (an ACK is due).

        What is sent is the object, the asked range of it, or its piece manifest (swarm/net/pieces.py)."""
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, self.lookup, request.hash)
        if data is None:
            why = {True: NOT_YET, False: GAVE_UP}.get(self.pending.get(request.hash), NOT_FOUND)
            await send_frame(writer, ERR, why.encode(), timeout=min(self.io_timeout, self.stall_timeout))
            self.stats.serve_failed += 1
            return False
        view = memoryview(data)
        whole = len(view)
        why = None
        if whole > request.max:
            why = f"payload is {whole} bytes, over the asked maximum"
        elif request.offset is not None and request.offset + request.length > whole:
            why = f"range {request.offset}+{request.length} is outside the {whole}-byte object"
        if why is not None:
            await send_frame(writer, ERR, why.encode(), min(self.io_timeout, self.stall_timeout))
            self.stats.serve_failed += 1
            return False
        if request.pieces:
            view = memoryview(await loop.run_in_executor(None, self._manifest, request.hash, data))
        elif request.offset is not None:
            view = view[request.offset : request.offset + request.length]
        size = len(view)
        if not priority:
            copies = size / max(whole, 1)
            if why := self._over_budget(key, address, copies):
                self._refused_budget(peer, address, why)
                await self._refuse(writer, why)
                return False
            now = time.monotonic()
            self._budget.charge(key, copies, self.budget_per_peer, now)
            self._budget.charge("@" + address, copies, self.budget_per_address, now)
        start = loop.time()
        deadline = start + self.rate_grace + size / self.min_rate if not priority else float("inf")
        stall = self.stall_timeout if not priority else max(self.stall_timeout, PRIORITY_STALL_TIMEOUT)
        sent = 0
        try:
            async with asyncio.timeout(min(start + stall, deadline)) as limit:
                await send_frame(writer, HDR, msgpack.packb({"size": size}))
                limit.reschedule(min(loop.time() + stall, deadline))
                hasher = hashlib.sha256()  # hashed as sent: overlaps with the network instead of a second pass
                for offset in range(0, size, CHUNK):
                    chunk = view[offset : offset + CHUNK]
                    hasher.update(chunk)
                    writer.write(DATA + len(chunk).to_bytes(4, "big"))
                    for piece in range(0, len(chunk), WRITE_PIECE):  # each piece must move within the stall limit
                        writer.write(chunk[piece : piece + WRITE_PIECE])
                        await writer.drain()
                        limit.reschedule(min(loop.time() + stall, deadline))
                    sent += len(chunk)
                    self.stats.bytes_out += len(chunk)
                await send_frame(writer, END, size.to_bytes(8, "big") + hasher.digest())
        except TimeoutError:
            if loop.time() >= deadline - 0.01:
                rate = f"{self.min_rate / 1024:g} KiB/s"
                raise TimeoutError(f"read {sent} of {size} bytes in {loop.time() - start:.1f}s, slower than "
                                   f"{rate} after {self.rate_grace:g}s") from None
            raise TimeoutError(f"took no bytes for {stall:g}s ({sent} of {size} sent)") from None
        return True
