"""A peer's Prometheus endpoint, scraped over real HTTP while the peer runs real cycles (in-memory DHT)."""

from __future__ import annotations

import re
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/swarm_double.py

from swarm_double import Swarm  # noqa: E402

from swarm.launch import write_manifest  # noqa: E402
from swarm.net.identity import load_or_create  # noqa: E402
from swarm.protocol.manifest import load  # noqa: E402
from swarm.roles import Miner, Validator  # noqa: E402

GENESIS = 1_900_000_000.0


def value(text: str, series: str) -> float | None:
    """One sample of the exposition text, e.g. value(text, 'teft_cycle')."""
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def test_scraped_cycle_and_phase_advance(tmp_path):
    key = load_or_create(tmp_path / "validator.key").public_key_str
    path = write_manifest("configs/tiny.yaml", tmp_path / "run" / "run.yaml", [key], GENESIS,
                          {"inner": {"steps": 3}, "quorum": 1, "data": {"validation_blocks": 8}})
    swarm = Swarm(load(path), tmp_path)
    swarm.add("validator", Validator, identity=load_or_create(tmp_path / "validator.key"))
    miner = swarm.add("miner", Miner)
    server = miner.metrics.serve(0)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    seen: list[tuple[float, float]] = []
    merged, agreed = set(), set()
    runner = threading.Thread(target=swarm.run, kwargs={"cycles": 2}, daemon=True)
    try:
        runner.start()
        while runner.is_alive():
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            seen.append((value(text, "teft_cycle"), value(text, "teft_phase_index")))
            merged.add(value(text, "teft_merged_miners"))
            agreed.add(value(text, "teft_state_agreement"))
            time.sleep(0.02)
        runner.join()
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        server.shutdown()
    cycles = [c for c, _ in seen if c is not None and c >= 0]
    assert cycles == sorted(cycles) and {0, 1} <= set(cycles), sorted(set(cycles))
    assert len({p for c, p in seen if c == 0}) >= 2, seen  # the phase moved within cycle 0
    assert value(text, "teft_cycles_total") >= 2  # the run stops early in cycle 2, which logs too
    assert value(text, 'teft_submissions_total{stage="committed"}') == 2  # the miner's own, once a cycle
    assert value(text, 'teft_train_loss{at="end"}') > 0
    assert value(text, 'teft_dht_seconds_count{op="store"}') >= 6  # peers, commit, reveal per cycle
    assert value(text, 'teft_peers_seen{role="validator"}') == 1
    assert 1 in agreed and 1 in merged, (agreed, merged)  # after cycles 0 and 1: one miner merged, hashes agree
    assert f'teft_peer_info{{peer="{miner.me}",role="miner"' in text
