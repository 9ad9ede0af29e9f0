"""`swarm.status` without a network: peers that wait for genesis are seen, and --watch follows the phases."""

from __future__ import annotations

import threading
import time

from swarm_double import MemoryDHT, Swarm

from swarm.launch import write_manifest
from swarm.net.identity import load_or_create
from swarm.protocol.manifest import load, run_id
from swarm.roles import Miner
from swarm.status import collect, follow, main


class Frozen:
    """A clock stuck before genesis: the peer announces itself, then waits until stopped."""

    def __init__(self, t: float):
        self.t = t

    def now(self) -> float:
        return self.t

    def wait_until(self, t: float, stop: threading.Event) -> bool:
        stop.wait()
        return False


def test_peers_waiting_for_genesis_are_counted(tmp_path):
    key = load_or_create(tmp_path / "v.key").public_key_str
    genesis = 1_900_000_000.0
    manifest = load(write_manifest("configs/tiny.yaml", tmp_path / "run.yaml", [key], genesis, {"quorum": 1}))
    swarm = Swarm(manifest, tmp_path)
    peer = swarm.add("miner", Miner)
    peer.time = Frozen(genesis - 60)
    runner = threading.Thread(target=peer.run, daemon=True)
    runner.start()
    reader = MemoryDHT(swarm.table, load_or_create(tmp_path / "reader.key"), run_id(manifest))
    deadline = time.monotonic() + 60
    while not swarm.table and time.monotonic() < deadline:
        time.sleep(0.05)
    status = collect(reader, manifest, now=genesis - 59)
    swarm.stop.set()
    runner.join(10)
    assert status["cycle"] < 0 and status["peers"] == {peer.me: "miner"}


def test_watch_refreshes_at_each_phase_change(tmp_path):
    key = load_or_create(tmp_path / "v.key").public_key_str
    timings = {name: 1.0 for name in ("sync", "train", "commit", "reveal", "evaluate", "reduce")}
    manifest = load(write_manifest("configs/tiny.yaml", tmp_path / "run.yaml", [key], time.time() + 2.0,
                                   {"quorum": 1, "timings": timings}))
    reader = MemoryDHT({}, load_or_create(tmp_path / "reader.key"), run_id(manifest))
    shown = []
    follow(lambda: collect(reader, manifest), 4, shown.append)
    where = [(s["cycle"], s["phase"]) for s in shown]
    assert len(where) == 4 and len(set(where)) == 4, where  # a new phase each refresh
    assert where[0][0] == -1 and where[-1][0] == 0


def test_count_without_watch_is_one_line(capsys):
    assert main(["--config", "configs/tiny.yaml", "--initial-peers", "/ip4/127.0.0.1/tcp/1", "--count", "2"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
