"""Fetch byte payloads by content hash from other peers over hivemind's libp2p streams.

The client side of the wire format in swarm/net/wire.py (the server is swarm/net/server.py): it refuses a
frame before reading its body when it would take the total past the announced size, checks length and
hash against both END and the requested hash, and ACKs so the server may close. Raw streams run several
times faster than hivemind's protobuf streams and need no .proto file.

`fetch_first` asks several holders of one object at once and keeps the first verified copy; many objects in
one phase are swarm/net/fetchmany.py, one object in pieces from every holder swarm/net/multisource.py.

All functions are coroutines on the event loop that owns the P2P object (for a DHT,
`await dht.replicate_p2p()` in that loop); BackgroundLoop runs one for synchronous code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from hivemind.p2p import P2P, PeerID
from hivemind.utils.multiaddr import Multiaddr

from swarm.errors import TransferError
from swarm.net.pieces import manifest_size
from swarm.net.wire import (
    ACK,
    FRAME_HEAD,
    REQ,
    Receiver,
    TransferStats,
    encode_request,
    peer_str,
    protocol_name,
    send_frame,
)

T = TypeVar("T")

logger = logging.getLogger(__name__)


def _bare(maddrs: Sequence[str | Multiaddr] | None) -> list[Multiaddr]:
    """Addresses as p2pd's connect takes them: it refuses the /p2p/<id> suffix, so that is cut off."""
    return [Multiaddr(str(m).split("/p2p/", 1)[0]) for m in maddrs or ()]


async def _connect(p2p: P2P, peer_id: PeerID, maddrs: Sequence[str | Multiaddr] | None) -> None:
    """Tell p2pd where the peer is when the caller knows (e.g. from its peers record)."""
    if maddrs:
        await p2p._client.connect(peer_id, _bare(maddrs))


async def connect_all(p2p: P2P, peers: Mapping[str, Sequence[str | Multiaddr] | None], timeout: float
                      ) -> dict[str, str | None]:
    """Dial every peer (id -> maddrs) at once; per peer None once connected, else one line saying why not.

    A connection carries streams both ways, whoever dialled it: a peer that nobody can dial (behind a NAT)
    dials those that must reach it, and their streams to it then go over that connection."""
    async def one(key: str, maddrs) -> str | None:
        try:
            # no addresses: the daemon looks the peer up itself
            await asyncio.wait_for(p2p._client.connect(PeerID.from_base58(key), _bare(maddrs)), timeout)
            return None
        except TimeoutError:
            return f"no connection within {timeout:g}s"
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            return " ".join(str(e).split())[:200] or type(e).__name__

    keys = list(peers)
    results = await asyncio.gather(*(one(k, peers[k]) for k in keys))
    return dict(zip(keys, results, strict=True))


FIRST_BYTE_S = 3.0  # dial, open a stream, and the answer's first frame: an honest server needs well under this
STALL_S = 5.0  # then every frame's head within this, and its body at MIN_FRAME_RATE: a holder that sends a header
SLOWER = "slower than another holder"  # what fetch_first tells on_failure of the holders it cancelled
MIN_FRAME_RATE = 64 * 1024  # and then nothing (or a trickle) fails in seconds, not after the whole timeout


async def _fetch(
    p2p: P2P,
    peer_id: PeerID,
    name: str,
    request: bytes,
    receiver: Receiver,
    stats: TransferStats,
    maddrs: Sequence[str | Multiaddr] | None,
) -> bytes:
    async def opened():
        await _connect(p2p, peer_id, maddrs)
        return await p2p.call_binary_stream_handler(peer_id, name)

    try:  # an address that accepts and never answers would otherwise hold a slot for the whole timeout
        _, reader, writer = await asyncio.wait_for(opened(), FIRST_BYTE_S)
    except TimeoutError:
        raise ConnectionError(f"no stream within {FIRST_BYTE_S:g}s") from None
    moving = False
    try:
        await send_frame(writer, REQ, request)
        first = True
        while True:
            try:
                head = await asyncio.wait_for(reader.readexactly(FRAME_HEAD), FIRST_BYTE_S if first else STALL_S)
            except TimeoutError:
                raise ConnectionError(f"no answer within {FIRST_BYTE_S:g}s of the request" if first
                                      else f"stalled: no frame for {STALL_S:g}s") from None
            if first:  # the link is busy from the first frame to the last (the rate the cycle log reports)
                stats.begin("in")
                moving = True
            first = False
            length = receiver.body_length(head)
            before = receiver.received
            try:
                body = await asyncio.wait_for(reader.readexactly(length), STALL_S + length / MIN_FRAME_RATE)
            except TimeoutError:
                raise ConnectionError(f"stalled: a {length}-byte frame took over "
                                      f"{STALL_S + length / MIN_FRAME_RATE:.0f}s") from None
            data = receiver.take(body)
            stats.bytes_in += receiver.received - before
            if data is not None:
                break
        await send_frame(writer, ACK)
        return data
    finally:
        if moving:
            stats.end("in")
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
    manifest_root: str | None = None,
) -> bytes:
    """Download one payload by hash from one peer; raises TransferError unless size and hash check out.

    exact=False accepts anything up to expected_size (for callers that only know a bound). With manifest_root,
    the object's piece manifest instead (swarm/net/pieces.py), checked against that root.
    """
    if manifest_root is not None:
        request = encode_request(payload_hash, expected_size, pieces=True)
        receiver = Receiver(manifest_root, manifest_size(expected_size), exact)
    else:
        request, receiver = encode_request(payload_hash, expected_size), Receiver(payload_hash, expected_size, exact)
    return await call(p2p, peer_id, f"fetch {payload_hash[:12]}", request, receiver, timeout, run_id=run_id,
                      stats=stats, maddrs=maddrs)


async def call(
    p2p: P2P,
    peer_id: PeerID | str,
    what: str,
    request: bytes,
    receiver: Receiver,
    timeout: float,
    *,
    run_id: str,
    stats: TransferStats | None = None,
    maddrs: Sequence[str | Multiaddr] | None = None,
) -> bytes:
    """One request to one peer, answered into `receiver` within `timeout`; every failure is one TransferError
    line that starts with `what` and names the peer."""
    stats = stats if stats is not None else TransferStats()
    shown = peer_str(peer_id)
    try:
        peer = PeerID.from_base58(peer_id) if isinstance(peer_id, str) else peer_id
        data = await asyncio.wait_for(
            _fetch(p2p, peer, protocol_name(run_id), request, receiver, stats, maddrs), timeout
        )
    except TimeoutError:
        stats.fetch_failed += 1
        raise TransferError(f"{what} from {shown}: timed out after {timeout:g}s") from None
    except asyncio.IncompleteReadError as e:
        stats.fetch_failed += 1
        raise TransferError(
            f"{what} from {shown}: stream closed after {len(e.partial)} of {e.expected} bytes of a frame"
        ) from None
    except Exception as e:  # noqa: BLE001 - every failure becomes one TransferError line
        stats.fetch_failed += 1
        reason = " ".join(str(e).split()) or type(e).__name__
        raise TransferError(f"{what} from {shown}: {reason}") from None
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
    return await fetch_first(p2p, peer_ids, payload_hash, expected_size, timeout, run_id=run_id, max_parallel=1,
                             stats=stats, maddrs=maddrs, exact=exact, deadline=deadline)


async def fetch_first(
    p2p: P2P,
    peer_ids: Sequence[PeerID | str],
    payload_hash: str,
    expected_size: int,
    timeout: float,
    *,
    run_id: str,
    max_parallel: int = 4,
    stats: TransferStats | None = None,
    maddrs: Mapping[str, Sequence[str | Multiaddr]] | None = None,
    exact: bool = True,
    on_failure: Callable[[str, str], None] | None = None,
    deadline: float | None = None,
    manifest_root: str | None = None,
) -> bytes:
    """Ask up to max_parallel holders at once, starting the next as one fails; the first verified copy wins
    and the other tries are cancelled. Holders that stall cost their own try, not a turn each: tried in turn,
    k holders that send a header and then nothing held a late joiner up for k whole timeouts.

    on_failure(peer id, reason) hears of every holder that failed, so the caller can rank it last next time;
    deadline (event-loop time) cuts every try short and starts none once it passes; manifest_root asks for the
    object's piece manifest instead (fetch).
    """
    if not peer_ids:
        raise TransferError(f"fetch {payload_hash[:12]}: no peer holds it")
    loop = asyncio.get_running_loop()
    waiting = list(peer_ids)
    running: dict[asyncio.Task, str] = {}
    reasons: list[str] = []

    def start_next() -> None:
        while waiting and len(running) < max(1, max_parallel):
            peer_id = waiting.pop(0)
            left = timeout if deadline is None else min(timeout, deadline - loop.time())
            if left <= 0:
                reasons.append(f"{peer_str(peer_id)} not tried: out of time")
                waiting.clear()
                return
            key = peer_id.to_base58() if isinstance(peer_id, PeerID) else str(peer_id)
            task = asyncio.create_task(fetch(p2p, peer_id, payload_hash, expected_size, left, run_id=run_id,
                                             stats=stats, maddrs=(maddrs or {}).get(key), exact=exact,
                                             manifest_root=manifest_root))
            running[task] = key

    start_next()
    try:
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                key = running.pop(task)
                error = task.exception()
                if error is None:
                    return task.result()
                reason = str(error).split(" from ", 1)[-1]
                reasons.append(reason)
                logger.info("%s; trying the next peer", error)
                if on_failure is not None:
                    on_failure(key, reason)
            start_next()
    finally:
        for task, key in running.items():  # slower than the winner: asked later next time too
            task.cancel()
            if on_failure is not None:
                on_failure(key, SLOWER)
        if running:
            await asyncio.wait(running, timeout=5.0)
    raise TransferError(f"fetch {payload_hash[:12]} from {len(reasons)} peer(s) failed: " + " | ".join(reasons))


class BackgroundLoop:
    """An event loop in a daemon thread, for synchronous peers that need P2P coroutines."""

    def __init__(self, name: str = "swarm-loop"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        """Start a coroutine on the loop without waiting for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

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
