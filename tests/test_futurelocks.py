"""hivemind's shared MPFuture locks, held by a process that died: released for the next DHT child."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

from hivemind.utils.mpfuture import MPFuture

from swarm.net import futurelocks


def _hold_and_sleep(ready) -> None:
    MPFuture._update_lock.acquire()
    ready.set()
    time.sleep(60)


def test_a_lock_held_by_a_killed_child_is_released_for_the_next():
    futurelocks.install()
    lock = MPFuture._update_lock
    assert isinstance(lock, futurelocks.TracedLock)
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_hold_and_sleep, args=(ready,), daemon=True)
    child.start()
    try:
        assert ready.wait(30)
        assert lock.holder.value == child.pid
        assert futurelocks.reclaim(os.getpid()) == []  # not ours to release
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert not lock.acquire(timeout=0.2)  # what hung every later DHT child
        assert futurelocks.reclaim(child.pid) == ["MPFuture._update_lock"]
        assert lock.acquire(timeout=1)
        assert lock.holder.value == os.getpid()
        lock.release()
        assert lock.holder.value == 0 and futurelocks.reclaim(child.pid) == []  # once only
    finally:
        if child.is_alive():
            child.kill()
            child.join(10)


def test_install_is_idempotent():
    futurelocks.install()
    first = MPFuture._update_lock
    futurelocks.install()
    assert MPFuture._update_lock is first
