"""Fetch byte payloads by content hash from other peers over hivemind's libp2p streams.

The client side of the wire format in swarm/net/wire.py (the server is swarm/net/server.py): it refuses a
frame before reading its body when it would take the total past the announced size, checks length and
hash against both END and the requested hash, and ACKs so the server may close. Raw streams run several
times faster than hivemind's protobuf streams and need no .proto file.

`fetch_many` fetches a validator's payloads in a caller-given order, several at once, under one wall-clock
budget, so one slow peer costs at most its own timeout.

All functions are coroutines on the event loop that owns the P2P object (for a DHT,
`await dht.replicate_p2p()` in that loop); BackgroundLoop runs one for synchronous code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from hivemind.p2p import P2P, PeerID
from hivemind.utils.multiaddr import Multiaddr

from swarm.errors import TransferError
from swarm.net.pieces import manifest_size
from swarm.net.wire import (
    ACK,
    FRAME_HEAD,
    NOT_FOUND,
    NOT_YET,
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


@dataclass
class FetchRequest:
    """One payload a caller wants, by hash, from these peers (tried in turn)."""

    payload_hash: str
    expected_size: int
    peers: Sequence[str]
    exact: bool = True
    maddrs: Mapping[str, Sequence[str]] | None = None
    relay_wait_s: float = 0.0  # the first of several peers may not hold it yet: ask it again while it answers
    #                            "not found", for this long at most, before the others (relay_first)


RELAY_POLL_S = 0.5  # how often a relay that does not hold the payload yet is asked again
RELAY_GRACE_S = 2.0  # a relay that says "not found" this early may not have begun its own fetch yet


async def relay_first(p2p: P2P, request: FetchRequest, timeout: float, *, run_id: str, stats: TransferStats,
                      deadline: float) -> bytes | None:
    """The payload from the request's first peer, a relay that is fetching it from its source: asked again every
    RELAY_POLL_S while it answers "not yet" (it is fetching it: fetch_stream's `pending`), or "not found" within
    RELAY_GRACE_S (it may not have begun), for relay_wait_s at most; None once that is spent, the relay could not
    get it either, or it fails otherwise (the caller then asks the others). A validator that another validator
    carries a payload for gets it this way, so the miner's uplink sends one copy rather than one per validator;
    a payload its carrier could not get (a key that serves nothing, a staller) costs the others about what it
    cost the carrier."""
    loop = asyncio.get_running_loop()
    relay, started = request.peers[0], loop.time()
    until = min(started + request.relay_wait_s, deadline)
    while loop.time() < until:
        try:
            return await fetch(p2p, relay, request.payload_hash, request.expected_size,
                               min(timeout, deadline - loop.time()), run_id=run_id, stats=stats,
                               maddrs=(request.maddrs or {}).get(relay), exact=request.exact)
        except TransferError as err:
            said = str(err).partition("peer says: ")[2]  # the relay's own answer, "" for any other failure
            if said != NOT_YET and not (said == NOT_FOUND and loop.time() - started < RELAY_GRACE_S):
                if said != NOT_FOUND:
                    logger.info("%s; asking the source", err)
                return None
        await asyncio.sleep(min(RELAY_POLL_S, max(until - loop.time(), 0.0)))
    return None


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
    on_result: Callable[[FetchResult], None] | None = None,
) -> list[FetchResult]:
    """Fetch every request, at most max_parallel at once, started in the given order, all within budget_s.

    Each try at one peer gets at most `timeout`; whatever is still running when the budget is spent is
    cancelled. Never raises for a peer's failure: result i (same order as requests) holds the bytes
    or an error line, so one slow peer costs its own slot and nothing else. `on_result` (called on this
    loop) sees each result once, as soon as it is final, so a caller can use the first while the rest
    are still on their way.
    """
    loop = asyncio.get_running_loop()
    stats = stats if stats is not None else TransferStats()
    deadline = loop.time() + budget_s
    results = [FetchResult(r) for r in requests]
    pending = iter(results)  # shared by the workers: each takes the next request in the caller's order

    def final(result: FetchResult) -> None:
        if on_result is not None:
            on_result(result)

    async def worker() -> None:
        for result in pending:
            req = result.request
            if loop.time() >= deadline:
                result.error = f"fetch {req.payload_hash[:12]}: not started, budget of {budget_s:g}s spent"
                final(result)
                continue
            result.started, start = True, loop.time()
            try:
                peers = req.peers
                if req.relay_wait_s > 0 and len(peers) > 1:
                    result.data = await relay_first(p2p, req, timeout, run_id=run_id, stats=stats, deadline=deadline)
                    peers = peers[1:]
                if result.data is None:
                    result.data = await fetch_any(
                        p2p, peers, req.payload_hash, req.expected_size, timeout, run_id=run_id,
                        stats=stats, maddrs=req.maddrs, exact=req.exact, deadline=deadline,
                    )
            except TransferError as e:
                result.error = str(e)
            except Exception as e:  # noqa: BLE001 - one bad request must not cost the others
                result.error = f"fetch {str(req.payload_hash)[:12]}: " + (" ".join(str(e).split()) or type(e).__name__)
            finally:
                result.seconds = loop.time() - start
                if result.data is not None or result.error is not None:  # not when cancelled: reported below
                    final(result)

    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(max_parallel, len(results))))]
    try:
        _, late = await asyncio.wait(workers, timeout=max(deadline - loop.time(), 0.0))
    except asyncio.CancelledError:  # the caller gave up: its fetches must not run on without it
        for task in workers:
            task.cancel()
        raise
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
            final(result)
    return results


def fetch_stream(
    background: BackgroundLoop,
    p2p: P2P,
    requests: Sequence[FetchRequest],
    budget_s: float,
    max_parallel: int,
    *,
    timeout: float,
    run_id: str,
    stats: TransferStats | None = None,
    on_data: Callable[[bytes], object] | None = None,
    pending: dict[str, bool] | None = None,
) -> Iterator[FetchResult]:
    """fetch_many on a background loop, started now, for a synchronous reader: each result is handed over as
    soon as it is final, in the order they finish, so a validator judges the first payload while the others
    are still arriving. `on_data` (on the loop) sees each verified payload as it arrives, whenever the reader
    comes to it; `pending` (a payload server's) marks each request's hash on its way (True) until it arrives
    (removed: the lookup finds it) or fails (False). Closing
    the iterator early cancels what is still running."""
    done: queue.SimpleQueue[FetchResult | None] = queue.SimpleQueue()
    wanted = {r.payload_hash for r in requests}
    if pending is not None:
        for digest in [d for d, coming in list(pending.items()) if not coming]:  # what failed before: no longer asked
            del pending[digest]
        pending.update(dict.fromkeys(wanted, True))

    def arrived(result: FetchResult) -> None:
        if result.data is not None and on_data is not None:
            try:
                on_data(result.data)
            except Exception as err:  # noqa: BLE001 - keeping a copy is a service to others; the reader gets it anyway
                logger.warning("could not keep payload %s: %s", result.request.payload_hash[:12], err)
        if pending is not None:  # kept (found by lookup from now on), or given up on
            if result.data is not None:
                pending.pop(result.request.payload_hash, None)
            else:
                pending[result.request.payload_hash] = False
        done.put(result)

    def ended(_) -> None:
        if pending is not None:
            for digest in wanted & {d for d, coming in list(pending.items()) if coming}:
                pending[digest] = False
        done.put(None)

    future = background.submit(fetch_many(p2p, requests, budget_s, max_parallel, timeout=timeout, run_id=run_id,
                                          stats=stats, on_result=arrived))
    future.add_done_callback(ended)
    give_up = time.monotonic() + budget_s + 10.0  # fetch_many ends within its budget and a few seconds of cleanup

    def results() -> Iterator[FetchResult]:
        try:
            for _ in range(len(requests)):
                item = done.get(timeout=max(give_up - time.monotonic(), 0.01))
                if item is None:
                    return
                yield item
        except queue.Empty:
            return
        finally:
            future.cancel()

    return results()


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
