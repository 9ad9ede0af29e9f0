"""How far this machine's clock is from the swarm's, measured against peers it trusts.

Every phase is a window on each peer's own clock, so a peer whose clock is off by more than a fraction of
the shortest phase commits after the others closed the window, or evaluates before reveals are visible,
and no log says why. At startup a peer asks the peers it has reason to trust (the initial peers its
operator gave it, and the manifest's allowlisted validators) for their time, NTP-style over one tiny
libp2p stream each, and refuses to run when the median offset is beyond the tolerance. Untrusted peers are
never asked, so a Sybil cannot talk a peer into a wrong clock.

Wire: the asker opens a stream on TIME_PROTOCOL and reads one 8-byte big-endian IEEE double (the
server's time.time()), then closes; nothing is sent the other way. The server answers at once and closes
once the asker has (or after two seconds).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hivemind.p2p import P2P, PeerID

logger = logging.getLogger(__name__)

TIME_PROTOCOL = "/teft/time/1"  # run-independent: a bootstrap node started without a manifest answers too
_FORMAT = ">d"


@dataclass(frozen=True)
class ClockSample:
    """One peer's answer: its clock minus ours at the middle of the round trip, and that round trip."""

    peer: str
    offset: float
    rtt: float


class TimeServer:
    """Answers TIME_PROTOCOL streams with this machine's time."""

    def __init__(self, p2p: P2P, now: Callable[[], float] = time.time):
        self.p2p, self.now = p2p, now

    async def start(self) -> TimeServer:
        await self.p2p.add_binary_stream_handler(TIME_PROTOCOL, self._handle)
        return self

    async def stop(self) -> None:
        try:
            await self.p2p.remove_binary_stream_handler(TIME_PROTOCOL)
        except Exception:  # noqa: BLE001 - the daemon may already be gone
            pass

    async def _handle(self, _stream_info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(struct.pack(_FORMAT, self.now()))
            await asyncio.wait_for(writer.drain(), 2.0)
            # close only once the asker has: a stream closed right after its last write can lose that write
            # (HIVEMIND_NOTES.md); an asker that never closes costs this coroutine two seconds
            await asyncio.wait_for(reader.read(1), 2.0)
        except Exception:  # noqa: BLE001 - a client that vanished or lingers costs nothing more
            pass
        finally:
            writer.close()


async def ask_time(p2p: P2P, peer: str, maddrs: Sequence[str] | None, timeout: float,
                   now: Callable[[], float] = time.time) -> ClockSample:
    """One peer's clock offset; raises on no answer within `timeout` or a malformed one."""
    from swarm.net.transfer import _connect

    peer_id = PeerID.from_base58(peer)

    async def exchange() -> ClockSample:
        await _connect(p2p, peer_id, maddrs)
        _, reader, writer = await p2p.call_binary_stream_handler(peer_id, TIME_PROTOCOL)
        try:
            start = now()
            body = await reader.readexactly(struct.calcsize(_FORMAT))
            end = now()
        finally:
            writer.close()
        (theirs,) = struct.unpack(_FORMAT, body)
        if theirs != theirs or abs(theirs) > 1e11:  # NaN or absurd: not a clock
            raise ValueError(f"answered {theirs!r}, not a time")
        return ClockSample(peer, theirs - (start + end) / 2, end - start)

    return await asyncio.wait_for(exchange(), timeout)


async def sample_clocks(p2p: P2P, peers: Mapping[str, Sequence[str] | None], timeout: float,
                        now: Callable[[], float] = time.time) -> list[ClockSample]:
    """The answers of those of `peers` (peer id -> maddrs) that answered within `timeout`, asked at once."""
    results = await asyncio.gather(*(ask_time(p2p, pid, maddrs, timeout, now) for pid, maddrs in peers.items()),
                                   return_exceptions=True)
    for pid, result in zip(peers, results, strict=True):
        if isinstance(result, BaseException):
            logger.debug("no time from %s: %s", pid[:12], result)
    return [r for r in results if isinstance(r, ClockSample)]


def clock_verdict(samples: Sequence[ClockSample], tolerance: float) -> tuple[float | None, str | None]:
    """(median offset, None) when this clock is within `tolerance` of the trusted peers', (offset, why) when
    it is not, (None, None) when nobody answered usefully. Answers whose round trip alone exceeds twice the
    tolerance cannot tell, and are left out."""
    usable = [s.offset for s in samples if s.rtt <= 2 * tolerance]
    if not usable:
        return None, None
    offset = statistics.median(usable)
    if abs(offset) <= tolerance:
        return offset, None
    side = "behind" if offset > 0 else "ahead of"
    return offset, (f"this machine's clock is {abs(offset):.1f}s {side} the swarm's (median of {len(usable)} "
                    f"trusted peer(s)), over the {tolerance:g}s the run tolerates (a quarter of its shortest "
                    "phase): sync it (e.g. enable NTP: timedatectl set-ntp true) and start again")
