"""Fixtures for network tests: fresh identities, and no p2pd left behind by this session."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import pytest
from netutil import alive, children, comm, proc_stat, wait_dead

from swarm.net import dht

# a DHT node that takes 40 s to start on a loaded machine is not a bug in the code under test: the suite must
# pass beside other jobs (a user's busy laptop), so nodes the tests start get four times the default
dht.STARTUP_TIMEOUT = 4 * dht.STARTUP_TIMEOUT

PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture(scope="session", autouse=True)
def _reap_p2pd():
    """Orphaned descendants come back to this process (subreaper); kill leftover p2pd at the end."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception:  # noqa: BLE001 - non-Linux: nothing to reap
        pass
    yield
    me = os.getpid()
    leftovers = [p for p in children(me) if comm(p) == "p2pd" and alive(p)]
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if leftovers:
        wait_dead(leftovers, 5)
    for pid in children(me):  # reap zombies reparented to us (never our live children)
        st = proc_stat(pid)
        if st is not None and st[1] == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    if leftovers:
        print(f"\nkilled {len(leftovers)} leftover p2pd process(es): {leftovers}", file=sys.stderr)


@pytest.fixture
def make_identity(tmp_path):
    """Factory for fresh persistent identities in the test's temp dir."""
    from swarm.net.identity import load_or_create

    def make(name: str = "peer"):
        return load_or_create(tmp_path / f"{name}.key")

    return make
