"""End to end: a whole swarm of real peer processes, driven by `python -m swarm.simulate`.

One swarm does the work: honest peers, the adversaries whose attack is on the real transport (an oversize
payload, a Sybil flood, a server that stalls, idle streams), a SIGKILL and restart, a late joiner, and full
fine-tuning beside it. Its report is checked for the protocol's promises in a form that can fail. Every adversary
kind, those included, is also driven through whole cycles in one process by tests/test_cycle.py and
tests/test_attacks.py; here the transport ones meet real processes, real p2pd daemons and real transfers.

As root (CI is root) the swarm runs in the network lab (swarm/sim/lab.py) rather than on 127.0.0.1: the bootstrap
node and the 2 validators on public hosts, every miner in a home network behind a NAT router of its own (nothing
gets in that the home did not ask for) on a capped uplink that drops 1% of packets each way; miner-2 is cut off the
internet for the whole of cycle 0 and the bootstrap node is SIGKILLed when cycle 1 begins, so the late joiner and
the restarted miner join through the validators. Validators fetch each payload from its miner, so every merge
crossed a NAT outward only. Without root the lab cannot be built, the swarm runs on 127.0.0.1 and the lab's own
checks say why they are skipped; the same swarm is then also asked `swarm.status` while it runs (the README's
walkthrough, tests/e2e/test_readme_swarm.py, asks it everywhere).
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMINGS = "sync=3,train=14,commit=3,reveal=4,evaluate=13,reduce=5"
CYCLE_S = 42
START_IN = "75"  # 10 peers starting at once on 2 cores are ready in about 45 s
LAB = os.geteuid() == 0  # the network lab creates network namespaces
# evaluate=13 s is 65% of tiny's 20 s, so the uplink is 4 Mbit/s, not the default 2.7: the same share of the phase
# per payload
LAB_ARGS = ["--network", "lab", "--uplink", "4", "--loss", "1", "--partition", f"miner-2@0:{CYCLE_S - 4}",
            "--kill-bootstrap", "1"]
needs_lab = pytest.mark.skipif(not LAB, reason="the network lab creates network namespaces: root only")
# a flood just under the evaluation cap (16), so every throwaway key costs each validator a real fetch attempt;
# the cap itself, with 200 keys, is tested in one process (tests/test_attacks.py, scripts/bench_sybil.py)
SYBILS = "9"
ENV = {**os.environ, "HIVEMIND_MEMORY_SHARING_STRATEGY": "file_descriptor", "TEFT_SYBILS": SYBILS}
pytestmark = pytest.mark.timeout(900)


def simulate(out: Path, *args: str, timeout: float = 800, during=None) -> dict:
    """Run a simulation to the end; `during(out)` is called once while its peers are running."""
    proc = subprocess.Popen([sys.executable, "-m", "swarm.simulate", "--out", str(out), "--timings", TIMINGS,
                             "--start-in", START_IN, *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        if during is not None:
            during(out)
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-4000:]
    return json.loads((out / "report.json").read_text())


def p2pd_pids() -> set[str]:
    return set(subprocess.run(["pgrep", "-x", "p2pd"], capture_output=True, text=True).stdout.split())


_BEFORE = p2pd_pids()  # daemons of anything else on the machine are not ours to judge


def no_p2pd_left():
    deadline = time.time() + 15  # a stopping daemon may take a moment to go
    while time.time() < deadline:
        if not p2pd_pids() - _BEFORE:
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory):
    """One swarm for every end-to-end promise: misbehaving peers, a miner SIGKILLed and restarted in cycle 1,
    a miner that joins in cycle 1, `swarm.status` asked during cycle 1, and full fine-tuning beside it."""
    out = tmp_path_factory.mktemp("adversarial") / "run"
    kinds = ["oversize", "sybil-flood", "slow-server", "slowloris"]
    _BEFORE_NS.update(lab_namespaces())
    return out, simulate(out, "--miners", "3", "--validators", "2", "--cycles", "2", "--baseline", "full",
                         "--kill-restart", "miner-0@1", "--late-miner", "1", "--adversary", *kinds,
                         *(LAB_ARGS if LAB else []), during=None if LAB else _status_in_cycle_2)


def lab_namespaces() -> set[str]:
    if not LAB:
        return set()
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("teftlab")}


_BEFORE_NS: set[str] = set()


def agreeing(row: dict) -> bool:
    """Every honest peer holds the one state; in the lab's cycle 0, every one but the miner the partition cut off
    (it read no ranking and kept its own state)."""
    if LAB and row["cycle"] == 0:
        return len({h for n, h in row["states"].items() if n != "miner-2"}) == 1
    return row["honest_agree"]


def test_honest_peers_agree_and_learn(adversarial):
    out, report = adversarial
    rows = report["per_cycle"]
    assert all(agreeing(r) for r in rows), [(r["cycle"], r["states"]) for r in rows]
    # 3 miners + 2 validators every cycle (the restarted one too), and the late miner from cycle 1 on
    assert [r["honest_peers_reporting"] for r in rows] == [5, 6]
    assert all(r["quorum_met"] for r in rows)
    assert rows[-1]["target_loss"] < report["base"]["target_loss"] - 0.05
    assert any(report["honest_miners_ever_merged"].values())
    for name in ("report.json", "summary.md", "target_loss.png", "general_perplexity.png", "bytes.png", "scores.png"):
        assert (out / name).stat().st_size > 0
    assert no_p2pd_left()


def test_drift_is_reported_next_to_full_fine_tuning_and_is_smaller(adversarial):
    out, report = adversarial
    rows = report["per_cycle"]
    assert len(report["baseline"]["full"]) == 4 * len(rows)
    assert all(r["general_drift"] is not None for r in rows)
    counts = report["drift_vs_full_ft"]
    assert counts["cycles_compared"] >= 2, rows  # the swarm's target loss lies within the baseline's reach
    # where the run ends, the swarm drifted less than full fine-tuning at the same target loss. Not every cycle:
    # in the lab's cycle 0 the partition leaves 2 miners, and one such merge once moved the target loss by 0.04
    # at 0.10 drift against full fine-tuning's 0.05 there (cycle 1: 0.12 against 0.21)
    last = rows[-1]
    assert last["general_drift"] < last["full_ft_drift_at_same_target_loss"], [
        (r["cycle"], r["target_loss"], r["general_drift"], r["full_ft_drift_at_same_target_loss"]) for r in rows]
    summary = (out / "summary.md").read_text()
    assert f"| {counts['cycles_swarm_drifts_less']} of {counts['cycles_compared']} cycles |" in summary


def test_no_adversary_is_ever_merged(adversarial):
    _, report = adversarial
    assert report["adversaries_ever_merged"] and not any(report["adversaries_ever_merged"].values())
    honest = {n for n, p in report["peers"].items() if p["adversary"] is None}
    for row in report["per_cycle"]:
        assert set(row["merged"]) <= honest, row["merged"]


def test_an_oversize_payload_is_refused_by_the_transfer_layer(adversarial):
    _, report = adversarial
    reasons = {}
    for row in report["per_cycle"]:
        for miner, why in row["rejected"].items():
            reasons.setdefault(miner, why)
        assert row["combined"].get("miner-oversize", 0.0) == 0.0
    # the real transfer layer refuses the extra bytes before reading them
    assert "over the asked maximum" in reasons["miner-oversize"] or "more than" in reasons["miner-oversize"]


def committed_cycles(out: Path, name: str) -> set[int]:
    """The cycles a peer was up for at the commit phase, from its log: on a loaded machine an adversary (at nice
    10) was seen to come up 90 s after it started, in cycle 0's evaluate phase, and attacked from cycle 1 only."""
    text = (out / "logs" / f"{name}.log").read_text()
    return {int(m) for m in re.findall(r" cycle (\d+) phase commit ", text)}


def test_a_flood_a_staller_and_a_slowloris_cost_their_own_slots(adversarial):
    """Every cycle still merges honest miners (above) while each validator tried the Sybils' and the
    stalling miner's payloads and gave up on them within the evaluate phase, in every cycle they committed."""
    out, report = adversarial
    names = set(report["peers"])
    flood, staller = committed_cycles(out, "miner-sybil-flood"), committed_cycles(out, "miner-slow-server")
    assert flood and staller, (flood, staller)  # up for one cycle at least
    for row in report["per_cycle"]:
        assert row["merged"] and set(row["merged"]) <= names - {"miner-sybil-flood", "miner-slow-server"}
        sybils = [m for m in row["rejected"] if m not in names]
        if row["cycle"] in flood:
            assert len(sybils) >= int(SYBILS) - 1, (row["cycle"], row["rejected"])
        if row["cycle"] in staller:
            assert "miner-slow-server" in row["rejected"], (row["cycle"], row["rejected"])
        assert "miner-slowloris" not in row["combined"]


def test_miner_upload_is_whole_payloads(adversarial):
    """A miner serves its own payload, whole, and at most whole checkpoints to peers catching up (the
    restarted miner and the late joiner): never a partial or padded object."""
    out, report = adversarial
    size = report["payload_bytes"]
    checkpoints = {path.stat().st_size for path in (out / "peers" / "validator-0" / "checkpoints").iterdir()}
    for row in report["per_cycle"]:
        for name in ("miner-0", "miner-1", "miner-2"):
            if (name, row["cycle"]) in {("miner-0", 1), ("miner-2", 0) if LAB else ()}:
                continue  # killed in that cycle's train phase; cut off the internet for that cycle
            sent = row["bytes"][name]["out"]
            whole = any((sent - k * c) % size == 0 and sent - k * c >= size
                        for c in checkpoints for k in range(3))
            assert whole, (row["cycle"], name, sent, size, checkpoints)
    assert report["dense_model_bytes"] > 5 * size


def _status_in_cycle_2(out: Path) -> None:
    """`python -m swarm.status` against the running swarm, once cycle 1 has begun."""
    from swarm.protocol.manifest import load

    deadline = time.time() + 600
    while time.time() < deadline and not (out / "join.txt").exists():
        time.sleep(1)
    manifest = load(out / "run.yaml")
    clock = manifest.clock()
    while time.time() < clock.phase_start(1, "train") and time.time() < deadline:
        time.sleep(1)
    proc = subprocess.run([sys.executable, "-m", "swarm.status", "--config", str(out / "run.yaml"),
                           "--initial-peers", (out / "join.txt").read_text().strip(), "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _STATUS.update(json.loads(proc.stdout))


_STATUS: dict = {}


def test_crash_restart_late_joiner_and_status(adversarial):
    out, report = adversarial
    from swarm.protocol.manifest import load, run_id

    if not LAB:  # the status command runs on this host, which cannot reach into the lab
        assert _STATUS["run_id"] == run_id(load(out / "run.yaml")) and _STATUS["cycle"] == 1
        assert sorted(_STATUS["peers"].values()).count("validator") == 2
        last = _STATUS["last_cycle"]
        assert last["cycle"] == 0 and last["quorum_met"] and last["merged"]
        assert list(last["state_hashes"])[0] == report["per_cycle"][0]["state_hash"]
    rows = report["per_cycle"]
    assert report["peers"]["miner-0"]["restarts"], "the kill never happened"
    log = [json.loads(line) for line in (out / "peers" / "miner-0" / "metrics.jsonl").read_text().splitlines()]
    by_cycle = {r["cycle"]: r["state_hash"] for r in log if r["state_hash"]}
    assert by_cycle[1] == rows[1]["state_hash"]  # after the crash it computes the same state as everyone else
    late = [json.loads(line) for line in (out / "peers" / "miner-latecomer" / "metrics.jsonl").read_text()
            .splitlines()]
    assert late and min(r["cycle"] for r in late) >= 1
    assert any(r["cycle"] == 1 and r["state_hash"] == rows[1]["state_hash"] for r in late)


@needs_lab
def test_natted_miners_are_judged_and_merged_through_the_faults(adversarial):
    """Every validator fetched and judged every NATed honest miner's payload (the cut-off one's from cycle 1,
    the killed one's from cycle 0), through a partition and a dead bootstrap node."""
    out, report = adversarial
    rows = report["per_cycle"]
    assert not report["network"]["hosts"]["miner-0"]["public"]
    names = {p["peer_id"]: n for n, p in report["peers"].items()}
    for v in ("validator-0", "validator-1"):
        judged = {}
        for line in (out / "peers" / v / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            judged[row["cycle"]] = {names[m] for m in row["evaluated"]}
        assert {"miner-0", "miner-1"} <= judged[0] and "miner-2" not in judged[0], (v, judged)
        assert {"miner-1", "miner-2"} <= judged[1], (v, judged)
    # reaching them is the network's promise; a merge also needs a positive Proof-of-Loss score, and one honest
    # miner's 20 noisy steps scored 0.0 once (fetched, judged, not merged), so merges are checked as a count
    honest = {"miner-0", "miner-1", "miner-2", "miner-latecomer"}
    merged = [set(r["merged"]) & honest for r in rows]
    assert merged[0] and merged[0] <= {"miner-0", "miner-1"} and len(merged[1]) >= 2, merged
    for miner in ("miner-1", "miner-2"):  # its measured uplink: about the 4 Mbit/s (0.5 MB/s) cap
        rate = rows[1]["bytes"][miner]["rate_out"]
        assert rate is not None and 0.1e6 < rate < 0.75e6, (miner, rate)
    # each payload's carrier validator fetched it and served the other: a miner sends about one copy, not one per
    # validator (2 copies each before: 8 payloads from the 4 honest miners of cycle 1; one run of this sent 5)
    sent = [rows[1]["bytes"][m]["out"] for m in sorted(honest)]
    assert sum(sent) <= 1.5 * len(honest) * report["payload_bytes"], sent
    partition, kill = report["faults"]
    assert (partition["kind"], partition["back_in_cycle"], partition["cost_cycles"]) == ("partition", 1, 1)
    assert (kill["kind"], kill["cost_cycles"]) == ("kill-bootstrap", 0), kill["verdict"]
    assert "Faults" in (out / "summary.md").read_text()
    assert lab_namespaces() == _BEFORE_NS  # every namespace, link and rule of the run is gone
