"""End to end in the network lab (swarm/sim/lab.py): a swarm whose miners nobody can dial.

A bootstrap node and 2 validators on public hosts; 3 honest miners, each in a home network behind a NAT router
of its own (nothing gets in that the home did not ask for), on a capped uplink that drops 1% of packets each
way. One miner is cut off the internet for the whole of cycle 0; the bootstrap node is SIGKILLed when cycle 1
begins. Validators fetch each payload from its miner, so every merge below crossed a NAT outward only.
Root only (CI is root): without it the lab cannot be built and the test says so.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# evaluate=13 s is 65% of tiny's 20 s, so the uplink is 4 Mbit/s, not the default 2.7: the same share of the phase
# per payload
TIMINGS = "sync=3,train=14,commit=3,reveal=4,evaluate=13,reduce=5"  # as tests/e2e/test_swarm.py
CYCLE_S = 42
ENV = {**os.environ, "HIVEMIND_MEMORY_SHARING_STRATEGY": "file_descriptor"}
pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(os.geteuid() != 0, reason="the network lab creates network namespaces: root only")]


def lab_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("teftlab")}


def test_natted_miners_merged_through_faults(tmp_path):
    before = lab_namespaces()
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "swarm.simulate", "--network", "lab", "--out", str(out), "--timings", TIMINGS,
         "--start-in", "75", "--miners", "3", "--validators", "2", "--cycles", "2",
         "--uplink", "4", "--loss", "1", "--partition", f"miner-2@0:{CYCLE_S - 4}", "--kill-bootstrap", "1"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    rows = report["per_cycle"]
    assert not report["network"]["hosts"]["miner-0"]["public"]
    # every validator fetched and judged every NATed miner's payload, but the cut-off one's in cycle 0: reaching
    # them is the network's promise; a merge also needs a positive Proof-of-Loss score, and one honest miner's
    # 20 noisy steps scored 0.0 in cycle 0 once (fetched, judged, not merged), so merges are checked as a count
    names = {p["peer_id"]: n for n, p in report["peers"].items()}
    for v in ("validator-0", "validator-1"):
        judged = {}
        for line in (out / "peers" / v / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row["cycle"] < 2:
                judged[row["cycle"]] = sorted(names[m] for m in row["evaluated"])
        assert judged == {0: ["miner-0", "miner-1"], 1: ["miner-0", "miner-1", "miner-2"]}, (v, judged)
    merged = [sorted(r["merged"]) for r in rows]
    assert merged[0] and set(merged[0]) <= {"miner-0", "miner-1"} and len(merged[1]) >= 2, merged
    # cycle 0: everyone the partition left alone agrees (the cut-off miner read no ranking and kept its own
    # state); cycle 1: every peer, the miner back from the partition included, holds the one agreed state
    cut_off = {n: h for n, h in rows[0]["states"].items() if n != "miner-2"}
    assert len(cut_off) == 4 and len(set(cut_off.values())) == 1, rows[0]["states"]
    assert len(rows[1]["states"]) == 5 and rows[1]["honest_agree"], rows[1]["states"]
    for miner in ("miner-0", "miner-1", "miner-2"):  # its measured uplink: about the 4 Mbit/s (0.5 MB/s) cap
        rate = rows[1]["bytes"][miner]["rate_out"]
        assert rate is not None and 0.1e6 < rate < 0.75e6, (miner, rate)
        partition, kill = report["faults"]
    assert (partition["kind"], partition["back_in_cycle"], partition["cost_cycles"]) == ("partition", 1, 1)
    assert (kill["kind"], kill["cost_cycles"]) == ("kill-bootstrap", 0), kill["verdict"]
    assert "Faults" in (out / "summary.md").read_text()
    assert lab_namespaces() == before  # every namespace, link and rule of the run is gone
