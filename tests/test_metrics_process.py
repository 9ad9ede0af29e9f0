"""`python -m bootstrap --metrics-port` as a real process: its endpoint follows the run's clock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarm.launch import write_manifest
from swarm.net.identity import load_or_create
from swarm.protocol.metrics import scrape_url
from swarm.sim.simulate import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(90)
def test_bootstrap_serves_the_run_clock(tmp_path):
    key = load_or_create(tmp_path / "v.key").public_key_str
    timings = {name: 1.0 for name in ("sync", "train", "commit", "reveal", "evaluate", "reduce")}
    manifest = write_manifest(ROOT / "configs" / "tiny.yaml", tmp_path / "run.yaml", [key], time.time() + 5,
                              {"timings": timings, "quorum": 1})
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HIVEMIND_MEMORY_SHARING_STRATEGY": "file_descriptor"}
    cmd = [sys.executable, "-m", "bootstrap", "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--identity",
           str(tmp_path / "keys" / "boot.key"), "--config", str(manifest), "--metrics-port", str(port),
           "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            got = scrape_url(f"http://127.0.0.1:{port}/metrics", timeout=1)
            if got and got.get("teft_cycle", -1) >= 0:
                seen.append((got["teft_cycle"], got["teft_phase_index"]))
                if len(set(seen)) >= 3:
                    break
            time.sleep(0.3)
        assert len(set(seen)) >= 3 and seen == sorted(seen), (seen, proc.poll())
        assert any(k.startswith('teft_peer_info{') and 'role="bootstrap"' in k for k in got)
        assert got['teft_dht_seconds_count{op="get"}'] >= 1  # it read the peers records of each phase
        outcome = ("teft_merged_miners", "teft_quorum_met", "teft_state_agreement")  # a peer's, never a bootstrap's
        assert not [k for k in got if k.startswith(outcome)], got
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    assert (tmp_path / "keys" / "boot.key").exists()  # its key directory was created
