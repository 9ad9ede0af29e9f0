"""Fetch many payloads within one phase: a validator's submissions, a peer's merged payloads.

`fetch_many` runs the requests in a caller-given order, several at once, under one wall-clock budget, so one
slow peer costs at most its own timeout; `fetch_stream` hands each result to a synchronous reader as it
arrives. A request whose first holder is a relay (a validator carrying the payload for the others) asks it
again while it is still fetching (`relay_first`); one whose payload has a pieces root and more than one
piece is fetched in pieces from all its holders at once (swarm/net/multisource.py), otherwise whole from one
holder at a time.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import queue
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from hivemind.p2p import P2P

from swarm.errors import TransferError
from swarm.net.multisource import MAX_HOLDERS, fetch_pieces
from swarm.net.pieces import PIECE
from swarm.net.transfer import BackgroundLoop, fetch, fetch_any
from swarm.net.wire import NOT_FOUND, NOT_YET, TransferStats

logger = logging.getLogger("swarm.net.transfer")


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
    root: str | None = None  # its pieces root: with more than one piece, fetched in pieces from the holders at once
    spread: int = 0  # in pieces, ask this many holders at once (the rest stand by for those that drop out); 0: all


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
                if result.data is None and req.root is not None and req.expected_size > PIECE and peers:
                    result.data = await fetch_pieces(  # bounded by the budget: late workers are cancelled
                        p2p, peers, req.payload_hash, req.root, req.expected_size, timeout, run_id=run_id,
                        stats=stats, maddrs=req.maddrs, max_holders=req.spread or MAX_HOLDERS,
                    )
                elif result.data is None:
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
    soon as it is final, so a validator judges the first payload while the others are still arriving. Results
    come in the order they finish, except that of those that finished while the reader was busy, the earliest
    requested comes first: a validator with time for few judgements spends it in its own order of the
    submissions (miners merged last cycle first), not in the order their payloads happened to land. `on_data`
    (on the loop) sees each verified payload as it arrives, whenever the reader comes to it; `pending` (a
    payload server's) marks each request's hash on its way (True) until it arrives (removed: the lookup finds
    it) or fails (False). Closing the iterator early cancels what is still running."""
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

    order = {id(r): i for i, r in enumerate(requests)}

    def results() -> Iterator[FetchResult]:
        ready: list[tuple[int, FetchResult]] = []  # finished, not yet handed over: a heap by request position
        over = False  # fetch_many has ended: nothing more will come

        def take(item: FetchResult | None) -> None:
            nonlocal over
            if item is None:
                over = True
            else:
                heapq.heappush(ready, (order[id(item.request)], item))

        try:
            for _ in range(len(requests)):
                if not ready and not over:  # nothing in hand: wait for the next result
                    try:
                        take(done.get(timeout=max(give_up - time.monotonic(), 0.01)))
                    except queue.Empty:
                        return
                while not over and not done.empty():  # and every other that finished meanwhile
                    take(done.get_nowait())
                if not ready:
                    return
                yield heapq.heappop(ready)[1]
        finally:
            future.cancel()

    return results()
