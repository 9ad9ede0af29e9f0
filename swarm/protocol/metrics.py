"""Prometheus metrics of one peer or bootstrap node: every name is defined here, and set from few places.

    Peer.announce  cycle, phase            Peer.put / Peer.get   DHT store/get latency
    Peer.finish    everything a CycleLog holds (peers seen, submissions, scores, merged, agreement, bytes,
                   train loss, evaluate-phase time used)

Each process owns one registry (several peers in one test process do not mix) and serves it only when
asked (`--metrics-port`); without a port the gauges are still kept, at the cost of a few dict writes.
The Grafana dashboard (configs/grafana-dashboard.json) is built on exactly these names.
"""

from __future__ import annotations

import logging
import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from swarm.protocol.clock import PHASES

logger = logging.getLogger("swarm.peer")

PREFIX = "teft_"
# a rejection reason (free text naming peers and numbers) -> a label with few values
REASONS = (("did not reveal", "no-reveal"), ("does not match its commit", "reveal-mismatch"),
           ("replayed", "replay"), ("non-finite", "non-finite"), ("shape", "shape"), ("key set", "keys"),
           ("dtype", "dtype"), ("delta norm", "delta-norm"), ("more than", "size"), ("no time left", "no-time"),
           ("fetch ", "fetch"), ("not received", "fetch"))


def reason_label(reason: str) -> str:
    """The bounded label of a rejection reason (Prometheus labels must not grow without end)."""
    text = reason.lower()
    return next((label for needle, label in REASONS if needle in text), "other")


def short(peer_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", peer_id)[:12]


class Metrics:
    """The metric objects of one process, in their own registry."""

    def __init__(self, role: str = "peer", run_id: str = "", peer: str = ""):
        r = self.registry = CollectorRegistry()
        g = lambda name, doc, labels=(): Gauge(PREFIX + name, doc, labels, registry=r)  # noqa: E731
        c = lambda name, doc, labels=(): Counter(PREFIX + name, doc, labels, registry=r)  # noqa: E731
        self.info = g("peer_info", "1, labelled with this process's role, run id and peer id",
                      ("role", "run", "peer"))
        self.cycle = g("cycle", "the cycle this peer is in")
        self.phase = g("phase", "1 for the phase this peer is in, 0 for the others", ("phase",))
        self.phase_index = g("phase_index", "the phase this peer is in: 0 sync, 1 train, 2 commit, 3 reveal, "
                             "4 evaluate, 5 reduce")
        self.peers_seen = g("peers_seen", "peers that announced themselves in the last finished cycle", ("role",))
        self.submissions = c("submissions_total", "submissions committed (a miner's own; the commits a validator "
                             "saw in time) and fetched (bytes received for evaluation)", ("stage",))
        self.rejected = c("submissions_rejected_total", "submissions a validator scored zero, by reason",
                          ("reason",))
        self.score = g("score", "this validator's Proof-of-Loss score per miner, last finished cycle", ("miner",))
        self.median = g("median_score", "combined (median) score per miner, last finished cycle", ("miner",))
        self.merged = g("merged_miners", "miners merged in the last finished cycle")
        self.quorum = g("quorum_met", "1 if enough allowlisted rankings were published last cycle")
        self.agree = g("state_agreement", "1 if this peer's Phi_{c+1} hash equals the one the allowlisted "
                       "validators agreed on, 0 if not, -1 if there was nothing to compare")
        self.agreed_cycles = c("state_agreed_cycles_total", "cycles whose state hash matched the agreed one")
        self.cycles = c("cycles_total", "cycles this peer finished")
        self.bytes_in = c("bytes_in_total", "payload and state bytes received")
        self.bytes_out = c("bytes_out_total", "payload and state bytes served")
        self.train_loss = g("train_loss", "a miner's inner training loss at the start and end of its cycle",
                            ("at",))
        self.eval_loss = g("validation_loss", "a validator's loss of Phi_{c+1} on fixed blocks", ("domain",))
        self.phase_seconds = g("phase_seconds", "seconds the role worked in each phase of the last cycle",
                               ("phase",))
        self.evaluate_used = g("evaluate_time_used_ratio", "share of the evaluate phase the validator worked")
        self.dht = Histogram(PREFIX + "dht_seconds", "latency of one signed-record store or get", ("op",),
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.info.labels(role, run_id, peer).set(1)
        self.cycle.set(-1)
        self.phase_index.set(-1)

    def set_phase(self, cycle: int, phase: str) -> None:
        """Called on every phase change (Peer.announce)."""
        self.cycle.set(cycle)
        for name in PHASES:
            self.phase.labels(name).set(1 if name == phase else 0)
        self.phase_index.set(PHASES.index(phase) if phase in PHASES else -1)

    def set_peers(self, peers_by_role: dict[str, int]) -> None:
        self.peers_seen.clear()
        for role, n in peers_by_role.items():
            self.peers_seen.labels(role).set(n)

    def observe_dht(self, op: str, seconds: float) -> None:
        self.dht.labels(op).observe(seconds)

    def record_cycle(self, log, peers_by_role: dict[str, int], evaluate_length: float) -> None:
        """Everything one finished cycle's log says (Peer.finish)."""
        self.cycles.inc()
        self.set_peers(peers_by_role)
        if log.submitted:
            self.submissions.labels("committed").inc()
        evaluated = set(log.scores) | set(log.rejected)
        if log.role == "validator":
            self.submissions.labels("committed").inc(len(evaluated))
            fetched = [m for m in log.scores if m not in log.rejected or reason_label(log.rejected[m]) != "fetch"]
            self.submissions.labels("fetched").inc(len(fetched))
        for reason in log.rejected.values():
            self.rejected.labels(reason_label(reason)).inc()
        self.score.clear()
        for miner, value in log.scores.items():
            self.score.labels(short(miner)).set(value)
        self.median.clear()
        for miner, value in log.medians.items():
            self.median.labels(short(miner)).set(value)
        self.merged.set(len(log.merged))
        self.quorum.set(1 if log.quorum_met else 0)
        if log.state_hash and log.agreed_hash:
            same = log.state_hash == log.agreed_hash
            self.agree.set(1 if same else 0)
            if same:
                self.agreed_cycles.inc()
        else:
            self.agree.set(-1)
        self.bytes_in.inc(max(log.bytes_in, 0))
        self.bytes_out.inc(max(log.bytes_out, 0))
        if log.train_loss:
            self.train_loss.labels("start").set(log.train_loss[0])
            self.train_loss.labels("end").set(log.train_loss[-1])
        for domain, value in (("target", log.target_loss), ("general", log.general_loss)):
            if value is not None:
                self.eval_loss.labels(domain).set(value)
        for phase, seconds in log.phase_seconds.items():
            self.phase_seconds.labels(phase).set(seconds)
        if log.role == "validator" and evaluate_length > 0:
            self.evaluate_used.set(log.phase_seconds.get("evaluate", 0.0) / evaluate_length)

    def scrape(self) -> str:
        """The text a Prometheus server would read."""
        return generate_latest(self.registry).decode()

    def serve(self, port: int, host: str = "127.0.0.1"):
        """Serve /metrics on host:port in a daemon thread; returns the HTTP server (its .server_port)."""
        from prometheus_client import start_http_server

        from swarm.errors import SwarmError

        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            raise SwarmError(f"cannot serve metrics on {host}:{port} ({err.strerror}): choose another "
                             "--metrics-port") from None
        logger.info("metrics on http://%s:%d/metrics", host, server.server_port)
        return server


def metric_names() -> set[str]:
    """Every series name this module defines, as Prometheus exposes them (for the dashboard check)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {family.name + end for family in Metrics().registry.collect() for end in suffixes.get(family.type, ("",))}


def parse(text: str) -> dict[str, float]:
    """Exposition text -> {series with labels: value}, leaving out comments and creation timestamps."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            if not series.split("{")[0].endswith("_created"):
                found[series] = float(value)
    return found


def scrape_url(url: str, timeout: float = 3.0) -> dict[str, float] | None:
    """One scrape of a /metrics endpoint, parsed; None if it does not answer."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return parse(response.read().decode())
    except OSError:
        return None
