"""Fetch one content-addressed object in pieces from every holder at once, each piece checked on arrival.

The object's piece manifest (swarm/net/pieces.py) comes first, from whichever holder serves bytes hashing to
the pinned root; then ranges of up to SPAN pieces are handed out to the holders, PER_HOLDER at a time each, in
the order given. Every piece is checked against the manifest before it is kept, so a holder that sends one bad
piece, stalls, or drops is out of this fetch after that range, and what it left undone goes to the others;
the pieces already kept stay. With a partial file the fetch also survives a restart: the next one starts
from the pieces that file holds (PieceSink).

Why it matters: a checkpoint or a miner pack is tens of GB at real scale, and its holders are peers on home
uplinks. Asked whole from one holder at a time, one slow holder sets the pace and a drop at 90% costs it all;
asked in pieces, every holder's uplink adds up and a drop costs one range.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from hivemind.p2p import P2P
from hivemind.utils.multiaddr import Multiaddr

from swarm.errors import TransferError
from swarm.net.pieces import PIECE, PieceSink, read_manifest
from swarm.net.transfer import SLOWER, call, fetch_first
from swarm.net.wire import Receiver, TransferStats, encode_request, peer_str

logger = logging.getLogger(__name__)

SPAN = 8  # pieces per range request: 8 MiB, so a stream's setup is small next to what it carries
PER_HOLDER = 2  # ranges asked of one holder at once
MAX_HOLDERS = 8  # holders asked at once; the rest stand by for those that drop out
ENDGAME_S = 2.0  # once every range is handed out, an idle holder doubles one in flight this long
STRIKES = 2  # failures (a busy server, a dropped stream) before a holder is out of this fetch; bad bytes: one


def _spans(indices: Sequence[int], span: int) -> deque[list[int]]:
    """Consecutive runs of piece indices, each at most `span` long, in order."""
    runs: deque[list[int]] = deque()
    for i in indices:
        if runs and runs[-1][-1] == i - 1 and len(runs[-1]) < span:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


async def fetch_pieces(
    p2p: P2P,
    holders: Sequence[str],
    digest: str,
    root: str,
    max_size: int,
    timeout: float,
    *,
    run_id: str,
    stats: TransferStats | None = None,
    maddrs: Mapping[str, Sequence[str | Multiaddr]] | None = None,
    partial: Path | None = None,
    on_failure: Callable[[str, str], None] | None = None,
    span: int = SPAN,
    per_holder: int = PER_HOLDER,
    max_holders: int = MAX_HOLDERS,
) -> bytes:
    """The object hashing to `digest`, whose piece manifest hashes to `root`, from `holders` at once.

    `timeout` bounds each request to one holder (the manifest, or one range); the fetch ends when every piece
    is held or no holder is left. `partial`: a file that keeps the pieces across a failed fetch or a restart
    (removed once the object is complete). on_failure(holder, reason) hears of each holder that dropped out.
    Raises TransferError naming every holder's failure."""
    stats = stats if stats is not None else TransferStats()
    if not holders:
        raise TransferError(f"fetch {digest[:12]}: no peer holds it")
    liars: set[str] = set()

    def failed(holder: str, reason: str) -> None:  # a holder slower to send the manifest is no worse for it
        if "not the requested hash" in reason:  # another manifest than the root's: its pieces would be too
            liars.add(holder)
        if on_failure is not None and reason != SLOWER:
            on_failure(holder, reason)

    manifest = await fetch_first(p2p, holders, digest, max_size, timeout, run_id=run_id, max_parallel=2,
                                 stats=stats, maddrs=maddrs, exact=False, on_failure=failed, manifest_root=root)
    size, digests = read_manifest(manifest)
    if size > max_size:
        raise TransferError(f"fetch {digest[:12]}: its piece manifest says {size} bytes, over the {max_size} expected")
    sink = PieceSink(size, digests, partial)
    done = False  # a partial file is kept for the next try unless the object is whole (or can never be)
    try:
        resumed = len(sink.have)
        if resumed:
            logger.info("fetch %s: %d of %d pieces already held from an earlier try", digest[:12], resumed,
                        len(digests))
        await _fill(p2p, [h for h in holders if h not in liars], digest, sink, timeout, run_id=run_id, stats=stats,
                    maddrs=maddrs or {}, on_failure=on_failure, span=span, per_holder=per_holder,
                    max_holders=max_holders)
        data = sink.bytes()
        if hashlib.sha256(data).hexdigest() != digest:  # the root was pinned with another object's hash
            done = True
            raise TransferError(f"fetch {digest[:12]}: its pieces check out but the whole hashes otherwise: "
                                "the pinned pieces root is not this object's")
        done = True
        return data
    finally:
        sink.close(done)


async def _fill(p2p: P2P, holders: list[str], digest: str, sink: PieceSink, timeout: float, *, run_id: str,
                stats: TransferStats, maddrs: Mapping[str, Sequence[str | Multiaddr]],
                on_failure: Callable[[str, str], None] | None, span: int, per_holder: int, max_holders: int
                ) -> None:
    """Hand out the missing pieces as ranges until every piece is held or no holder is left.

    Each range goes to the asking holder with the fewest failures and ranges in flight, so a range a holder
    failed goes to another. Once nothing is left to hand out, an idle holder also asks for a range that has
    been in flight for ENDGAME_S (the first copy to arrive wins, the other is cancelled): a holder that
    stalls on the last range costs ENDGAME_S, not its stall deadline, and only a range's worth is sent twice."""
    loop = asyncio.get_running_loop()
    waiting = deque(holders)
    asking: list[str] = []
    while waiting and len(asking) < max_holders:
        asking.append(waiting.popleft())
    # ranges small enough that every holder asked gets some work, at most `span` pieces
    queue = _spans(sink.missing(), max(1, min(span, -(-len(sink.missing()) // (max(len(asking), 1) * per_holder)))))
    strikes: dict[str, int] = {}
    reasons: dict[str, str] = {}
    running: dict[asyncio.Task, tuple[str, list[int], float]] = {}
    dropped: list[asyncio.Task] = []

    def ask(holder: str, run: list[int]) -> None:
        first = run[0]
        length = sum(sink.length(i) for i in run)
        receiver = Receiver(None, length, True, pieces=[sink.digests[i] for i in run],
                            on_piece=lambda k, data: sink.put(first + k, data))
        request = encode_request(digest, sink.size, offset=first * PIECE, length=length)
        task = asyncio.create_task(call(p2p, holder, f"fetch {digest[:12]} pieces {first}-{run[-1]}", request,
                                        receiver, timeout, run_id=run_id, stats=stats, maddrs=maddrs.get(holder)))
        running[task] = (holder, run, loop.time())

    def busy(holder: str) -> int:
        return sum(1 for h, _, _ in running.values() if h == holder)

    def free() -> list[str]:
        """Asking holders with a free slot, the fewest failures and the least in flight first."""
        ranked = sorted(asking, key=lambda h: (strikes.get(h, 0), busy(h), asking.index(h)))
        return [h for h in ranked if busy(h) < per_holder]

    try:
        while queue or running:
            while waiting and len(asking) < max_holders:
                asking.append(waiting.popleft())
            while queue and (ready := free()):
                ask(ready[0], queue.popleft())
            if not queue:  # endgame: idle holders double the ranges that have been in flight too long
                for holder in [h for h in free() if busy(h) == 0]:
                    late = [(t0, run) for h, run, t0 in running.values() if h != holder
                            and loop.time() - t0 >= ENDGAME_S and sum(r == run for _, r, _ in running.values()) == 1]
                    if late:
                        ask(holder, min(late)[1])
            if not running:
                break
            finished, _ = await asyncio.wait(running, timeout=ENDGAME_S / 2 if not queue else None,
                                             return_when=asyncio.FIRST_COMPLETED)
            failed: list[list[int]] = []
            for task in finished:
                holder, run, _ = running.pop(task)
                error = task.exception()
                if error is None:  # every piece of the range arrived and checked out
                    continue
                failed.append(run)
                reason = str(error).split(" from ", 1)[-1]
                bad = "does not match" in reason or "not the next whole piece" in reason
                strikes[holder] = strikes.get(holder, 0) + (STRIKES if bad else 1)
                if strikes[holder] >= STRIKES and holder in asking:
                    asking.remove(holder)
                    reasons[holder] = reason
                    logger.info("%s; %s is out of this fetch", error, peer_str(holder))
                    if on_failure is not None:
                        on_failure(holder, reason)
            for task, (_, run, _) in list(running.items()):  # a doubled range that the other copy completed
                if all(i in sink.have for i in run):
                    task.cancel()
                    dropped.append(task)
                    del running[task]
            if failed:  # what failed ranges did not deliver, and no other copy is fetching, goes back first
                flying = {i for _, run, _ in running.values() for i in run}
                lost = sorted({i for run in failed for i in run if i not in sink.have and i not in flying})
                queue.extendleft(reversed(_spans(lost, span)))
    finally:
        for task in running:
            task.cancel()
        pending = [*running, *dropped]
        if pending:
            await asyncio.wait(pending, timeout=5.0)
    if sink.missing():
        lines = " | ".join(f"{peer_str(h)}: {why}" for h, why in reasons.items()) or "no holder left"
        raise TransferError(f"fetch {digest[:12]}: {len(sink.missing())} of {len(sink.digests)} pieces not "
                            f"fetched ({lines})")
