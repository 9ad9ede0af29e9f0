"""The network lab (swarm/sim/lab.py) builds what it says: NAT that lets nothing in, a capped uplink, loss, a
partition that cuts and heals, and nothing left behind. Real namespaces, real sockets; root only (CI is root)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from swarm.errors import SwarmError
from swarm.sim.lab import PREFIX, Lab

REPO = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the network lab creates network namespaces: root only")

SERVE = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9000)); s.listen(); print("up", flush=True)
c, peer = s.accept(); n = 0
while (b := c.recv(65536)): n += len(b)
print(n, peer[0], flush=True)
"""
SEND = """
import socket, sys, time
t = time.monotonic()
s = socket.create_connection((sys.argv[1], 9000), timeout=float(sys.argv[3]))
s.sendall(b"x" * int(sys.argv[2])); s.shutdown(socket.SHUT_WR); s.recv(1); print(time.monotonic() - t)
"""

PROBE = """
import sys
from swarm.net.probe import probe
for address in sys.argv[1:]:
    print(probe(f"/ip4/{address}/tcp/9000", 2.0))
"""


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def send(lab_host, to: str, size: int, timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(lab_host.wrap([sys.executable, "-c", SEND, to, str(size), str(timeout)]),
                          capture_output=True, text=True, timeout=timeout + 20)


def serve(lab_host) -> subprocess.Popen:
    proc = subprocess.Popen(lab_host.wrap([sys.executable, "-c", SERVE, "0.0.0.0"]), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "up"
    return proc


@needs_root
def test_nat_cap_loss_partition_and_cleanup():
    before = set(namespaces())
    with Lab() as lab:
        public = lab.add_public("validator-0")
        home = lab.add_home("miner-0", uplink_mbit=4.0, loss_pct=1.0)
        assert set(lab.namespaces()) - before == {public.ns, home.ns, home.router, lab.inet}

        server = serve(public)  # out of the home: allowed, masqueraded onto the router's public address
        try:
            sent = send(home, public.address, 2_000_000)
            assert sent.returncode == 0, sent.stderr
            received, source = server.communicate(timeout=30)[0].split()
        finally:
            server.kill()
            server.wait()
        assert int(received) == 2_000_000 and source == home.wan
        rate = 2_000_000 * 8 / float(sent.stdout) / 1e6
        assert 2.5 < rate < 4.4, f"{rate:.2f} Mbit/s through a 4 Mbit/s uplink with 1% loss"

        server = serve(home)  # into the home: nobody can dial it, neither its router's address nor its own
        try:
            for target in (home.wan, home.address):
                dialed = send(public, target, 10, timeout=2.0)
                assert dialed.returncode != 0 and ("timed out" in dialed.stderr or "unreachable" in dialed.stderr)
            said = subprocess.run(public.wrap([sys.executable, "-c", PROBE, home.wan, home.address]), cwd=REPO,
                                  capture_output=True, text=True, timeout=60).stdout.splitlines()
            assert said[0].startswith("timed out") and said[1].startswith("unreachable"), said
        finally:
            server.kill()
            server.wait()

        lab.partition("miner-0")  # cut: not even an outgoing connection gets through, then healed
        cut = send(home, public.address, 10, timeout=2.0)
        assert cut.returncode != 0
        lab.heal("miner-0")
        server = serve(public)
        try:
            assert send(home, public.address, 1000).returncode == 0
        finally:
            server.kill()
            server.wait()
    assert set(namespaces()) == before


@needs_root
def test_sigterm_removes_every_namespace(tmp_path):
    """A lab in a process that gets SIGTERM mid-run leaves nothing behind (simulate turns SIGTERM into Ctrl-C)."""
    code = ("import signal, sys, time; from swarm.sim.lab import Lab\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))\n"
            "lab = Lab().start(); lab.add_public('a'); lab.add_home('b', 2.0, 1.0)\n"
            "print(lab.tag, flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        tag = proc.stdout.readline().strip()
        assert len([ns for ns in namespaces() if ns.startswith(f"{PREFIX}-{tag}-")]) == 4
        proc.terminate()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not [ns for ns in namespaces() if ns.startswith(f"{PREFIX}-{tag}-")]


def test_refuses_without_root_in_one_line(monkeypatch, capsys):
    """Not root: one line saying why, before anything is built or written (the uid is faked: the interpreter
    here is not readable by an unprivileged user)."""
    from swarm import simulate

    out = Path("/tmp") / f"teft-lab-noroot-{os.getpid()}"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert simulate.main(["--network", "lab", "--out", str(out)]) == 2
    finally:
        signal.signal(signal.SIGTERM, before)  # simulate turns SIGTERM into Ctrl-C for its own process
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the network lab needs root"), err
    assert not out.exists()


def test_fault_specs_are_checked():
    from swarm.sim.faults import parse_faults

    names = {"miner-0", "validator-0", "bootstrap"}
    faults = parse_faults(["miner-0,validator-0@2:30"], 1, ["miner-0@3:5"], names)
    assert [(f.kind, f.targets, f.cycle, f.seconds) for f in faults] == [
        ("partition", ["miner-0", "validator-0"], 2, 30.0), ("freeze", ["miner-0"], 3, 5.0),
        ("kill-bootstrap", ["bootstrap"], 1, 0.0)]
    for bad in (["miner-0@2"], ["miner-0@x:3"], ["@1:3"], ["miner-9@1:3"]):
        with pytest.raises(SwarmError, match="--partition"):
            parse_faults(bad, None, [], names)
    with pytest.raises(SwarmError, match=">= 1"):
        parse_faults([], 0, [], names)
