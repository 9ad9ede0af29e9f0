"""Operator-facing pieces without a network: the dashboard, rejection labels, why nothing merged."""

from __future__ import annotations

import json
import re
from pathlib import Path

from swarm.protocol.consensus import why_nothing_merged
from swarm.protocol.cyclelog import CycleLog
from swarm.protocol.manifest import load
from swarm.protocol.metrics import Metrics, metric_names, reason_label

DASHBOARD = Path(__file__).resolve().parents[1] / "configs" / "grafana-dashboard.json"


def test_dashboard_loads_and_every_panel_uses_metrics_the_code_defines():
    dashboard = json.loads(DASHBOARD.read_text())
    defined = metric_names()
    used = set()
    for panel in dashboard["panels"]:
        names = {n for t in panel["targets"] for n in re.findall(r"\bteft_[a-z_]+", t["expr"])}
        assert names, panel["title"]
        assert names <= defined, (panel["title"], names - defined)
        used |= names
    # the list: cycle, phase, role, peers, submissions, rejections, scores, merged, agreement, bytes,
    # train loss, evaluate time, DHT latency
    for name in ("teft_cycle", "teft_phase_index", "teft_peer_info", "teft_peers_seen", "teft_submissions_total",
                 "teft_submissions_rejected_total", "teft_score", "teft_merged_miners", "teft_state_agreement",
                 "teft_bytes_in_total", "teft_bytes_out_total", "teft_train_loss", "teft_evaluate_time_used_ratio",
                 "teft_dht_seconds_bucket"):
        assert name in used, name


def test_rejection_reasons_map_to_few_labels():
    assert reason_label("layers.0.experts.3.w has non-finite values") == "non-finite"
    assert reason_label("replayed payload from cycle 2") == "replay"
    assert reason_label("fetch ab12 from 1 peer(s) failed: peer sent 900 bytes, more than the 800") == "size"
    assert reason_label("fetch ab12 from Qm: timed out after 30s") == "fetch"
    assert reason_label("something new") == "other"
    assert reason_label("gains 0.0500 on the public validation split but 0.0100 on held-out data: fitted to public "
                        "data") == "overfit"


def test_labelled_counters_start_at_zero_so_increase_sees_the_first_rejection():
    """A counter series that first appears at 1 has no earlier sample: Prometheus' increase() reads 0 for it."""
    m = Metrics("validator", "run", "me")
    before = m.scrape()
    for line in ('teft_submissions_rejected_total{reason="overfit"} 0.0',
                 'teft_submissions_rejected_total{reason="other"} 0.0', 'teft_submissions_total{stage="fetched"} 0.0',
                 "teft_state_agreement -1.0"):  # nothing compared yet, not "differs"
        assert line in before, line
    m.record_cycle(CycleLog(0, "validator", "me", scores={"m": 0.0}, rejected={"m": "x: fitted to public data"}),
                   {}, evaluate_length=10.0)
    assert 'teft_submissions_rejected_total{reason="overfit"} 1.0' in m.scrape()


def test_score_labels_join_peer_info():
    """A miner's teft_score label is the full peer id its own teft_peer_info carries (was: the first 12 chars)."""
    miner_id = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
    miner = Metrics("miner", "run", miner_id).scrape()
    validator = Metrics("validator", "run", "validator-id")
    validator.record_cycle(CycleLog(0, "validator", "validator-id", scores={miner_id: 0.3}, medians={miner_id: 0.3}),
                           {}, evaluate_length=10.0)
    text = validator.scrape()
    assert f'teft_score{{miner="{miner_id}"}} 0.3' in text and f'teft_median_score{{miner="{miner_id}"}} 0.3' in text
    assert f'peer="{miner_id}"' in miner


def test_a_bootstrap_node_exports_no_cycle_outcome():
    """It takes no part in cycles: a merged 0, quorum 0 or agreement 0 from it would read as disagreement."""
    names = {line.split("{")[0].split(" ")[0] for line in Metrics("bootstrap", "run", "b").scrape().splitlines()
             if not line.startswith("#")}
    assert {"teft_cycle", "teft_phase_index", "teft_peer_info"} <= names
    assert not names & {"teft_merged_miners", "teft_quorum_met", "teft_state_agreement", "teft_score",
                        "teft_submissions_rejected_total", "teft_state_validators"}, names


def test_a_cycle_log_sets_the_gauges():
    m = Metrics("validator", "run", "me")
    log = CycleLog(3, "validator", "me", scores={"minerA": 0.2, "minerB": 0.0}, rejected={"minerB": "x has dtype"},
                   medians={"minerA": 0.2}, merged=["minerA"], quorum_met=True, state_hash="h", agreed_hash="h",
                   state_votes={"v1": "h", "v2": "h", "v3": "x"}, state_dissent=["v3"], state_silent=["v4"],
                   bytes_in=100, bytes_out=7, phase_seconds={"evaluate": 3.0})
    m.record_cycle(log, {"miner": 2, "validator": 1}, evaluate_length=15.0)
    text = m.scrape()
    for line in ('teft_submissions_total{stage="committed"} 2.0', 'teft_submissions_total{stage="fetched"} 2.0',
                 'teft_submissions_rejected_total{reason="dtype"} 1.0', 'teft_score{miner="minerA"} 0.2',
                 "teft_state_agreement 1.0", "teft_bytes_in_total 100.0", "teft_evaluate_time_used_ratio 0.2",
                 'teft_peers_seen{role="miner"} 2.0', 'teft_state_validators{published="agreed"} 2.0',
                 'teft_state_validators{published="other"} 1.0', 'teft_state_validators{published="none"} 1.0'):
        assert line in text, line


def test_nothing_merged_says_why(tmp_path):
    manifest = _manifest(tmp_path)
    no_quorum = CycleLog(1, "validator", "me", quorum_met=False)
    assert why_nothing_merged(no_quorum, manifest).startswith("no quorum (0 allowlisted ranking(s) read, quorum 1")
    silent = CycleLog(1, "validator", "me", quorum_met=True)
    assert why_nothing_merged(silent, manifest) == "this validator saw no commit in time"
    zeros = CycleLog(1, "validator", "me", quorum_met=True, scores={"minerA": 0.0, "minerB": 0.0},
                     rejected={"minerA": "delta norm 9 exceeds the bound 5"})
    why = why_nothing_merged(zeros, manifest)
    assert why.startswith("all 2 submission(s) scored zero") and "delta norm 9" in why and "lost Proof-of-Loss" in why


def _manifest(tmp_path: Path):
    """The tiny template with one validator and quorum 1."""
    from swarm.launch import write_manifest
    from swarm.net.identity import load_or_create

    key = load_or_create(tmp_path / "v.key").public_key_str
    return load(write_manifest("configs/tiny.yaml", tmp_path / "run.yaml", [key], 0.0, {"quorum": 1}))


def test_simulate_gives_each_peer_an_endpoint_and_scrapes_it(tmp_path):
    from swarm.sim.simulate import Swarm

    swarm = Swarm(tmp_path, metrics=True)
    peer = swarm.add("miner-0", "miner")
    cmd = swarm.command(peer)
    port = int(cmd[cmd.index("--metrics-port") + 1])
    assert port == peer.metrics_port and port != swarm.bootstrap_metrics_port
    served = Metrics("miner", "run", peer.peer_id)
    served.set_phase(3, "commit")
    server = served.serve(port)
    try:
        scraped = swarm.scrape()
    finally:
        server.shutdown()
    assert scraped["miner-0"]["teft_cycle"] == 3 and scraped["miner-0"]['teft_phase{phase="commit"}'] == 1
    assert scraped["bootstrap"] is None  # not started here: reported as silent, not an error
    assert "--metrics-port" not in Swarm(tmp_path / "plain").command(peer)
