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
    def failed(holder: str, reason: str) -> None:  # a holder slower to send the manifest is no worse for it
        if on_failure is not None and reason != SLOWER:
            on_failure(holder, reason)

    manifest = await fetch_first(p2p, holders, digest, max_size, timeout, run_id=run_id, max_parallel=2,
                                 stats=stats, maddrs=maddrs, exact=False, on_failure=failed, manifest_root=root)
    size, digests = read_manifest(manifest)
    if size > max_size:
        raise TransferError(f"fetch {digest[:12]}: its piece manifest says {size} bytes, over the {max_size} expected")
    sink = PieceSink(size, digests, partial)
    done = False
    try:
        resumed = len(sink.have)
        if resumed:
            logger.info("fetch %s: %d of %d pieces already held from an earlier try", digest[:12], resumed,
                        len(digests))
        await _fill(p2p, list(holders), digest, sink, timeout, run_id=run_id, stats=stats, maddrs=maddrs or {},
                    on_failure=on_failure, span=span, per_holder=per_holder, max_holders=max_holders)
        data = sink.bytes()
        if hashlib.sha256(data).hexdigest() != digest:  # the root was pinned with another object's hash
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
    """Hand out the missing pieces as ranges until every piece is held or no holder is left."""
    queue = _spans(sink.missing(), span)
    waiting = deque(holders)
    asking: list[str] = []
    strikes: dict[str, int] = {}
    reasons: dict[str, str] = {}
    running: dict[asyncio.Task, tuple[str, list[int]]] = {}

    def ask(holder: str, run: list[int]) -> asyncio.Task:
        first = run[0]
        length = sum(sink.length(i) for i in run)
        receiver = Receiver(None, length, True, pieces=[sink.digests[i] for i in run],
                            on_piece=lambda k, data: sink.put(first + k, data))
        request = encode_request(digest, sink.size, offset=first * PIECE, length=length)
        return asyncio.create_task(call(p2p, holder, f"fetch {digest[:12]} pieces {first}-{run[-1]}", request,
                                        receiver, timeout, run_id=run_id, stats=stats, maddrs=maddrs.get(holder)))

    try:
        while queue or running:
            while waiting and len(asking) < max_holders:
                asking.append(waiting.popleft())
            for holder in list(asking):
                busy = sum(1 for h, _ in running.values() if h == holder)
                while queue and busy < per_holder:
                    run = queue.popleft()
                    running[ask(holder, run)] = (holder, run)
                    busy += 1
            if not running:
                break
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                holder, run = running.pop(task)
                left = [i for i in run if i not in sink.have]
                if left:  # what it did not deliver goes back first, for the others
                    queue.extendleft(reversed(_spans(left, span)))
                error = task.exception()
                if error is None:
                    continue
                reason = str(error).split(" from ", 1)[-1]
                bad = "does not match" in reason or "not the next whole piece" in reason
                strikes[holder] = strikes.get(holder, 0) + (STRIKES if bad else 1)
                if strikes[holder] >= STRIKES and holder in asking:
                    asking.remove(holder)
                    reasons[holder] = reason
                    logger.info("%s; %s is out of this fetch", error, peer_str(holder))
                    if on_failure is not None:
                        on_failure(holder, reason)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=5.0)
    if sink.missing():
        lines = " | ".join(f"{peer_str(h)}: {why}" for h, why in reasons.items()) or "no holder left"
        raise TransferError(f"fetch {digest[:12]}: {len(sink.missing())} of {len(sink.digests)} pieces not "
                            f"fetched ({lines})")
