"""Process helpers for network tests (Linux /proc)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def proc_stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    comm = raw[raw.find(b"(") + 1 : raw.rfind(b")")].decode(errors="replace")
    fields = raw[raw.rfind(b")") + 2 :].split()
    return comm, fields[0].decode(), int(fields[1])


def children(pid: int) -> list[int]:
    """Direct children of pid."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st is not None and st[2] == pid:
                out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    st = proc_stat(pid)
    return st is not None and st[1] != "Z"


def comm(pid: int) -> str | None:
    st = proc_stat(pid)
    return None if st is None else st[0]


def wait_dead(pids: list[int], timeout: float) -> list[int]:
    """Poll until every pid is gone or a zombie; returns those still alive after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


async def until(condition, timeout: float = 10.0) -> bool:
    """Poll `condition` every 50 ms on the running loop; False if it is still false after `timeout` seconds."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
