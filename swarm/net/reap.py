"""Process reaping for the DHT node: p2pd and the DHT child never outlive the peer that started them.

Cleanup works in two layers, both installed inside the DHT child process by SwarmDHT.run:
  * p2pd is spawned with PR_SET_PDEATHSIG=SIGTERM (asyncio's create_subprocess_exec is
    wrapped in the child only), so the kernel ends p2pd whenever the DHT child exits,
    however it exits (shutdown, SIGTERM from multiprocessing at exit, SIGKILL, crash).
  * a watchdog thread polls os.getppid(); once the process that created the DHT is gone
    (SIGKILL leaves the DHT child running, reparented), it terminates the child's own
    children (p2pd) explicitly, reaps them, and exits.
"""

from __future__ import annotations

import asyncio.subprocess as aio_subprocess
import ctypes
import logging
import os
import signal
import sys
import time
from typing import Any

logger = logging.getLogger("swarm.net.dht")

PR_SET_PDEATHSIG = 1
WATCHDOG_INTERVAL = 0.5


def _p2pd_preexec() -> None:
    """preexec_fn for p2pd: die with the DHT process, and stay out of the terminal's Ctrl-C.

    PR_SET_PDEATHSIG makes the kernel send SIGTERM once the spawning thread's process dies.
    Its own process group keeps a Ctrl-C aimed at the peer from killing p2pd before the peer
    has shut the DHT down cleanly (which otherwise costs the 3 s shutdown grace period).
    """
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - non-Linux: the watchdog still covers the parent-death case
        pass


def tie_subprocesses_to_this_process() -> None:
    """In the DHT child only: make every subprocess asyncio spawns (p2pd) die with us."""
    if not sys.platform.startswith("linux"):
        return
    original = aio_subprocess.create_subprocess_exec

    async def create_subprocess_exec(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("preexec_fn", _p2pd_preexec)
        return await original(*args, **kwargs)

    aio_subprocess.create_subprocess_exec = create_subprocess_exec


def children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from /proc (no psutil dependency)."""
    found: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            found.setdefault(int(fields[1]), []).append(int(entry))
    return found


def _children(pid: int) -> list[int]:
    """Direct children of pid."""
    return children_by_parent().get(pid, [])


def _alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def terminate_children(grace: float = 3.0) -> None:
    """SIGTERM this process's children, SIGKILL whatever is left after `grace`, and reap them."""
    pids = _children(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def watch_parent(parent_pid: int) -> None:
    """Runs in the DHT child for its whole life: exit once the creating process is gone."""
    while True:
        time.sleep(WATCHDOG_INTERVAL)
        if os.getppid() != parent_pid:
            try:
                logger.warning("parent process %d is gone; DHT node %d exits", parent_pid, os.getpid())
                terminate_children()
            finally:
                os._exit(0)
