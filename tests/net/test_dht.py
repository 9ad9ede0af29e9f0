"""DHT node start-up errors and the watchdog that keeps p2pd from outliving its peer."""

from __future__ import annotations

import functools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from netutil import alive, children, comm, wait_dead

from swarm.errors import SwarmError
from swarm.net.dht import start_dht, visible_maddrs

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(240)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_initial_peer(make_identity):
    ghost = make_identity("ghost").peer_key
    addr = f"/ip4/127.0.0.1/tcp/{_free_port()}/p2p/{ghost}"
    started = time.monotonic()
    with pytest.raises(SwarmError) as err:
        start_dht(make_identity("me"), initial_peers=[addr], startup_timeout=10)
    assert time.monotonic() - started < 15
    msg = str(err.value)
    assert msg.startswith("could not reach any initial peer") and addr in msg and "bootstrap node is running" in msg
    assert "\n" not in msg


def test_bad_initial_peer_address(make_identity):
    with pytest.raises(SwarmError, match="no /p2p/"):
        start_dht(make_identity(), initial_peers=["/ip4/127.0.0.1/tcp/31337"])
    with pytest.raises(SwarmError, match="not a multiaddr"):
        start_dht(make_identity(), initial_peers=["127.0.0.1:31337"])


def test_identity_in_use(make_identity):
    ident = make_identity("twin")
    first = start_dht(ident)
    try:
        with pytest.raises(SwarmError, match="in use by another running peer"):
            start_dht(ident, initial_peers=visible_maddrs(first))
    finally:
        first.shutdown()


HOST = """
import sys, time
sys.path.insert(0, sys.argv[1])
from swarm.net.identity import load_or_create
from swarm.net.dht import start_dht
dht = start_dht(load_or_create(sys.argv[2]))
print(dht.pid, flush=True)
time.sleep(60)
"""


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    return lines.get(timeout=timeout)


def test_sigkill_leaves_no_orphans(make_identity):
    ident = make_identity("host")
    host = subprocess.Popen([sys.executable, "-c", HOST, str(ROOT), str(ident.path)], stdout=subprocess.PIPE, text=True)
    try:
        dht_pid = int(_first_line(host, 150))  # imports and a DHT start: a minute and more on a loaded machine
        p2pd = []
        for _ in range(50):
            p2pd = [p for p in children(dht_pid) if comm(p) == "p2pd"]
            if p2pd:
                break
            time.sleep(0.1)
        assert p2pd, "p2pd not found under the DHT process"
        os.kill(host.pid, signal.SIGKILL)
        host.wait(10)
        assert wait_dead([dht_pid, *p2pd], 30) == [], "DHT child or p2pd outlived a SIGKILLed parent"
    finally:
        if host.poll() is None:
            host.kill()
            host.wait(10)
    # the point of it all: the same identity can start again right away
    again = start_dht(ident)
    assert again.peer_id.to_base58() == ident.peer_key
    again.shutdown()
    assert not alive(dht_pid)


async def _hold_the_update_lock(dht, node):
    """Run in the DHT process: take hivemind's shared result lock and keep it (its result then never leaves)."""
    from hivemind.utils.mpfuture import MPFuture

    MPFuture._update_lock.acquire()


def test_a_node_killed_holding_the_result_lock_does_not_hang_the_next(make_identity):
    """A DHT child terminated while it held MPFuture's shared lock left every later child hanging at its
    first result ("did not start within 120s" in the network tests on a loaded machine)."""
    first = start_dht(make_identity("holder"))
    first.shutdown_timeout = 1.0
    first.run_coroutine(_hold_the_update_lock, return_future=True)  # its answer waits on the lock forever
    time.sleep(1.0)
    first.shutdown()  # the grace period runs out: terminated
    assert first.exitcode is not None
    second = start_dht(make_identity("next"), startup_timeout=60)
    try:
        assert visible_maddrs(second)
    finally:
        second.shutdown()


async def _routing_table(dht, node) -> set[str]:
    return {str(p) for p in node.protocol.routing_table.peer_id_to_uid}


async def _holds(key: str, dht, node) -> bool:
    from hivemind.dht.routing import DHTID

    return node.protocol.storage.get(DHTID.generate(source=key)) is not None


def test_client_mode_nodes_hold_no_records_for_others(make_identity):
    """`--client-mode` (a miner behind a NAT): no server lists the node, so records land on servers every peer
    can dial and none on a home that only it can leave. As servers, two NATed miners held the rankings that the
    validators stored, the others could not dial them and read none (the lab swarm split in CI)."""
    from hivemind.utils.timed_storage import get_dht_time

    from swarm.net.records import StateRecord, get_records, record_key, store_record

    run = "0badc0de0badc0de"
    ids = {n: make_identity(n) for n in ("server", "citizen", "home-1", "home-2")}
    nodes = {"server": start_dht(ids["server"], run_id=run)}
    try:
        join = visible_maddrs(nodes["server"])
        nodes["citizen"] = start_dht(ids["citizen"], join, run_id=run)
        for home in ("home-1", "home-2"):
            nodes[home] = start_dht(ids[home], join, run_id=run, client_mode=True)
        ranking = StateRecord(state_hash="12" * 32)
        assert store_record(nodes["citizen"], run, 0, "state", ranking, ids["citizen"], get_dht_time() + 60)
        assert get_records(nodes["home-2"], run, 0, "state")[ids["citizen"].peer_key].record == ranking
        listed = nodes["server"].run_coroutine(_routing_table)
        assert ids["citizen"].peer_key in listed  # a server-mode joiner is listed: the check can fail
        assert not {ids["home-1"].peer_key, ids["home-2"].peer_key} & listed
        key = record_key(run, 0, "state")
        assert nodes["server"].run_coroutine(functools.partial(_holds, key))
        assert not nodes["home-1"].run_coroutine(functools.partial(_holds, key))  # (home-2's read cached it)
    finally:
        for node in nodes.values():
            node.shutdown()
