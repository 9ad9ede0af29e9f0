"""hivemind's cross-process MPFuture locks, made safe against a DHT child that dies holding one.

hivemind's MPFuture serializes every result a DHT child sends back to its creator under one class-level
multiprocessing lock shared by every process forked from that creator (and two more locks like it). A child
killed while it held the lock (terminate() after a failed or slow start, or after a shutdown grace ran out)
leaves it held for good: every DHT child forked afterwards hangs at its first result, so the next start_dht
"did not start within 120s". Seen in the network tests on a loaded machine, and it would hit a peer whose DHT
start is retried.

`install()` (at import of swarm.net.dht, before any fork) wraps those locks so that each notes which process
holds it, in shared memory; `reclaim(pid)`, called once a DHT child is known dead, releases whatever that
process held. A multiprocessing Lock can be released by a process other than its holder, and the dead holder
will never touch it again.
"""

from __future__ import annotations

import multiprocessing as mp
import os

from hivemind.utils.mpfuture import MPFuture, SharedBytes


class TracedLock:
    """A multiprocessing lock that records its holder's pid (0: free) in shared memory."""

    def __init__(self, lock):
        self.lock = lock
        self.holder = mp.Value("i", 0, lock=False)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        got = self.lock.acquire(block, timeout) if timeout is not None else self.lock.acquire(block)
        if got:
            self.holder.value = os.getpid()
        return got

    def release(self) -> None:
        self.holder.value = 0
        self.lock.release()

    def __enter__(self) -> TracedLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def reclaim(self, pid: int) -> bool:
        """Release the lock if the (dead) process `pid` holds it; True if it did."""
        if not pid or self.holder.value != pid:
            return False
        self.holder.value = 0
        self.lock.release()
        return True


def _locks() -> list[tuple[object, str]]:
    return [(MPFuture, "_update_lock"), (MPFuture, "_initialization_lock"), (SharedBytes, "_lock")]


def install() -> None:
    """Wrap hivemind's MPFuture locks (idempotent; call before forking DHT children)."""
    for owner, name in _locks():
        lock = getattr(owner, name)
        if not isinstance(lock, TracedLock):
            setattr(owner, name, TracedLock(lock))


def reclaim(pid: int | None) -> list[str]:
    """Release every wrapped lock the dead process `pid` still holds; the names of those released."""
    released = []
    for owner, name in _locks():
        lock = getattr(owner, name)
        if pid and isinstance(lock, TracedLock) and lock.reclaim(pid):
            released.append(f"{owner.__name__}.{name}")
    return released
