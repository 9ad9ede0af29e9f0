"""`python -m bootstrap` as a real process: JOIN lines, peers join through it, clean exit."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hivemind.utils.timed_storage import get_dht_time
from netutil import children, comm, wait_dead

from swarm.net.dht import start_dht
from swarm.net.records import StateRecord, get_records, store_record

ROOT = Path(__file__).resolve().parents[2]
RUN = "0badc0de0badc0de"


def _lines(stream) -> queue.Queue:
    q: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _descendants_named(pid: int, name: str) -> list[int]:
    found, todo = [], [pid]
    for _ in range(1000):
        if not todo:
            break
        p = todo.pop()
        for c in children(p):
            todo.append(c)
            if comm(c) == name:
                found.append(c)
    return found


@pytest.mark.timeout(240)
def test_bootstrap_process(make_identity, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HIVEMIND_MEMORY_SHARING_STRATEGY": "file_descriptor"}
    cmd = [sys.executable, "-m", "bootstrap", "--host_maddrs", "/ip4/127.0.0.1/tcp/0"]
    cmd += ["--identity", str(tmp_path / "boot.key"), "--startup-timeout", "120", "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = _lines(proc.stdout)
    peers = []
    try:
        join = []
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            line = out.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, "bootstrap exited before printing JOIN"
            if line.startswith("JOIN "):
                join.append(line.split()[1])
                break
        assert join and join[0].startswith("/ip4/127.0.0.1/tcp/") and "/p2p/" in join[0]
        p2pd = _descendants_named(proc.pid, "p2pd")
        assert p2pd

        a, b = make_identity("a"), make_identity("b")
        peers.append(start_dht(a, initial_peers=join, run_id=RUN, check_identity_free=False))
        peers.append(start_dht(b, initial_peers=join, run_id=RUN, check_identity_free=False))
        assert store_record(peers[0], RUN, 0, "state", StateRecord(state_hash="12" * 32), a, get_dht_time() + 60)
        assert get_records(peers[1], RUN, 0, "state")[a.peer_key].record == StateRecord(state_hash="12" * 32)

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 10
        assert wait_dead(p2pd, 5) == [], "bootstrap left its p2pd behind"
    finally:
        for dht in peers:
            dht.shutdown()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
