"""Prometheus metrics of one peer or bootstrap node: every name is defined here, and set from few places.

    Peer.announce  cycle, phase            Peer.put / Peer.get   DHT store/get latency
    Peer.finish    everything a CycleLog holds (peers seen, submissions, scores, merged, agreement, bytes,
                   train loss, evaluate-phase time used)

Each process owns one registry (several peers in one test process do not mix) and serves it only when
asked (`--metrics-port`); without a port the gauges are still kept, at the cost of a few dict writes.
The Grafana dashboard (configs/grafana-dashboard.json) is built on exactly these names.
"""

from __future__ import annotations

import io
import logging
import selectors
import socket
import threading
import time
from email.utils import formatdate
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_wsgi_app

from swarm.protocol.clock import PHASES

logger = logging.getLogger("swarm.peer")

PREFIX = "teft_"
# a rejection reason (free text naming peers and numbers) -> a label with few values
REASONS = (("fitted to public data", "overfit"), ("did not reveal", "no-reveal"),
           ("does not match its commit", "reveal-mismatch"), ("replayed", "replay"), ("non-finite", "non-finite"),
           ("shape", "shape"), ("key set", "keys"), ("dtype", "dtype"), ("delta norm", "delta-norm"),
           ("more than", "size"), ("no time left", "no-time"), ("fetch ", "fetch"), ("not received", "fetch"))
REASON_LABELS = tuple(dict.fromkeys(label for _, label in REASONS)) + ("other",)
STAGES = ("committed", "fetched")


def reason_label(reason: str) -> str:
    """The bounded label of a rejection reason (Prometheus labels must not grow without end)."""
    text = reason.lower()
    return next((label for needle, label in REASONS if needle in text), "other")


class Metrics:
    """The metric objects of one process, in their own registry."""

    def __init__(self, role: str = "peer", run_id: str = "", peer: str = ""):
        r = self.registry = CollectorRegistry()
        g = lambda name, doc, labels=(): Gauge(PREFIX + name, doc, labels, registry=r)  # noqa: E731
        c = lambda name, doc, labels=(): Counter(PREFIX + name, doc, labels, registry=r)  # noqa: E731
        self.info = g("peer_info", "1, labelled with this process's role, run id and peer id (the full id, as the "
                      "miner label of teft_score and teft_median_score)", ("role", "run", "peer"))
        self.cycle = g("cycle", "the cycle this peer is in")
        self.phase = g("phase", "1 for the phase this peer is in, 0 for the others", ("phase",))
        self.phase_index = g("phase_index", "the phase this peer is in: 0 sync, 1 train, 2 commit, 3 reveal, "
                             "4 evaluate, 5 reduce")
        self.peers_seen = g("peers_seen", "peers that announced themselves in the last finished cycle", ("role",))
        self.dht = Histogram(PREFIX + "dht_seconds", "latency of one signed-record store or get", ("op",),
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.info.labels(role, run_id, peer).set(1)
        self.cycle.set(-1)
        self.phase_index.set(-1)
        if role != "bootstrap":  # a bootstrap node takes no part in cycles: a 0 from it would read as disagreement
            self._cycle_metrics(g, c)

    def _cycle_metrics(self, g, c) -> None:
        """What a finished cycle sets: only peers (miners, validators) have these."""
        self.submissions = c("submissions_total", "submissions committed (a miner's own; the commits a validator "
                             "saw in time) and fetched (bytes received for evaluation)", ("stage",))
        self.rejected = c("submissions_rejected_total", "submissions a validator scored zero, by reason",
                          ("reason",))
        self.score = g("score", "this validator's Proof-of-Loss score per miner (full peer id), last finished cycle",
                       ("miner",))
        self.median = g("median_score", "combined (median) score per miner (full peer id), last finished cycle",
                        ("miner",))
        self.merged = g("merged_miners", "miners merged in the last finished cycle")
        self.quorum = g("quorum_met", "1 if enough allowlisted rankings were published last cycle")
        self.agree = g("state_agreement", "1 if this peer's Phi_{c+1} hash equals the one the allowlisted "
                       "validators agreed on, 0 if not, -1 if there was nothing to compare")
        self.agreed_cycles = c("state_agreed_cycles_total", "cycles whose state hash matched the agreed one")
        self.state_votes = g("state_validators", "allowlisted validators by what they published for the last "
                             "finished cycle's state: agreed, other (a hash other than the strict quorum's), none",
                             ("published",))
        self.cycles = c("cycles_total", "cycles this peer finished")
        self.bytes_in = c("bytes_in_total", "payload and state bytes received")
        self.bytes_out = c("bytes_out_total", "payload and state bytes served")
        self.link_rate = g("link_rate_bytes", "bytes/s the link carried while a transfer moved bytes, last "
                           "finished cycle (download: fetches, upload: serving)", ("direction",))
        self.train_loss = g("train_loss", "a miner's inner training loss at the start and end of its cycle",
                            ("at",))
        self.eval_loss = g("validation_loss", "a validator's loss of Phi_{c+1} on fixed blocks", ("domain",))
        self.phase_seconds = g("phase_seconds", "seconds the role worked in each phase of the last cycle",
                               ("phase",))
        self.evaluate_used = g("evaluate_time_used_ratio", "share of the evaluate phase the validator worked")
        for stage in STAGES:  # every labelled counter exists at 0 from the start, so increase() sees its first step
            self.submissions.labels(stage)
        for label in REASON_LABELS:
            self.rejected.labels(label)
        self.agree.set(-1)  # no cycle finished yet: nothing to compare

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
            self.score.labels(miner).set(value)
        self.median.clear()
        for miner, value in log.medians.items():
            self.median.labels(miner).set(value)
        self.merged.set(len(log.merged))
        self.quorum.set(1 if log.quorum_met else 0)
        if log.state_hash and log.agreed_hash:
            same = log.state_hash == log.agreed_hash
            self.agree.set(1 if same else 0)
            if same:
                self.agreed_cycles.inc()
        else:
            self.agree.set(-1)
        votes = log.state_votes.values()
        self.state_votes.labels("agreed").set(sum(h == log.agreed_hash for h in votes) if log.agreed_hash else 0)
        self.state_votes.labels("other").set(sum(h != log.agreed_hash for h in votes) if log.agreed_hash
                                             else len(votes))
        self.state_votes.labels("none").set(len(log.state_silent))
        self.bytes_in.inc(max(log.bytes_in, 0))
        self.bytes_out.inc(max(log.bytes_out, 0))
        for direction, rate in (("download", log.rate_in), ("upload", log.rate_out)):
            if rate:
                self.link_rate.labels(direction).set(rate)
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

    def serve(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Serve /metrics on host:port from one daemon thread; returns the server (its .server_port, .shutdown())."""
        from swarm.errors import SwarmError

        try:
            server = MetricsServer(self.registry, host, port)
        except OSError as err:
            raise SwarmError(f"cannot serve metrics on {host}:{port} ({err.strerror}): choose another "
                             "--metrics-port") from None
        logger.info("metrics on http://%s:%d/metrics", host, server.server_port)
        return server


HTTP_TIMEOUT_S = 5.0  # a connection's whole request head must arrive, and its answer leave, within this
HTTP_MAX_CONNECTIONS = 128  # connections held at once; a new one drops the oldest
_MAX_HEAD = 16 * 1024  # request line and headers; a scrape sends a few hundred bytes


class MetricsServer:
    """The /metrics endpoint from one thread, however many clients connect.

    prometheus_client's start_http_server spends a thread per connection for as long as the client keeps it
    open, so idle connections cost threads without limit (2,000 of them: 1,273 threads). Here one thread waits
    on every connection with a selector: a connection holds no thread, must send its whole request head and
    take its answer within `timeout` seconds of being accepted, and at most `max_connections` are held (the
    oldest is dropped for a new one, so a scrape is never locked out by connections that say nothing). The
    answer comes from prometheus_client's own WSGI app, so its body and headers are start_http_server's.
    One request per connection, as before (HTTP/1.0 semantics: the server closes after the answer).
    """

    def __init__(self, registry, host: str, port: int, timeout: float = HTTP_TIMEOUT_S,
                 max_connections: int = HTTP_MAX_CONNECTIONS):
        self.timeout, self.max_connections = timeout, max_connections
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            self._listener.listen(128)
            self._listener.setblocking(False)
        except OSError:
            self._listener.close()
            raise
        self.server_address = self._listener.getsockname()
        self.server_port = self.server_address[1]
        self._app = make_wsgi_app(registry)
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._conns: dict = {}  # socket -> [deadline, request bytes, answer bytes left]; in accept order
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-http", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop serving, close every connection and the port, and join the thread (idempotent)."""
        self._stopping.set()
        try:
            self._wake_write.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(5.0)

    def server_close(self) -> None:
        self.shutdown()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                for key, _mask in self._selector.select(timeout=0.25):
                    sock = key.fileobj
                    if sock is self._listener:
                        self._accept()
                    elif sock is self._wake_read:
                        continue
                    elif sock in self._conns:
                        self._step(sock)
                now = time.monotonic()
                for sock in [s for s, state in self._conns.items() if state[0] <= now]:
                    self._drop(sock)  # in accept order, so the loop stops early in practice; at most 128
        except Exception:  # noqa: BLE001 - the endpoint must never take the peer down: say so once and stop
            logger.exception("metrics endpoint stopped")
        finally:
            for sock in list(self._conns):
                self._drop(sock)
            for sock in (self._listener, self._wake_read, self._wake_write):
                try:
                    self._selector.unregister(sock)
                except (KeyError, ValueError):
                    pass
                sock.close()
            self._selector.close()

    def _accept(self) -> None:
        for _ in range(64):  # a burst is accepted over a few rounds, so the connections already in are served too
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors: drop the oldest to make room, then try again
                if self._conns:
                    self._drop(next(iter(self._conns)))
                return
            while len(self._conns) >= self.max_connections:
                self._drop(next(iter(self._conns)))
            sock.setblocking(False)
            self._conns[sock] = [time.monotonic() + self.timeout, bytearray(), None]
            self._selector.register(sock, selectors.EVENT_READ, None)

    def _drop(self, sock) -> None:
        self._conns.pop(sock, None)
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    def _step(self, sock) -> None:
        """Read more of a request, or write more of an answer."""
        state = self._conns[sock]
        try:
            if state[2] is None:
                data = sock.recv(65536)
                if not data:
                    self._drop(sock)
                    return
                state[1] += data
                if b"\r\n\r\n" not in state[1]:
                    if len(state[1]) > _MAX_HEAD:
                        self._drop(sock)
                    return
                state[2] = memoryview(self._answer(bytes(state[1])))
                self._selector.modify(sock, selectors.EVENT_WRITE, None)
            sent = sock.send(state[2])
            state[2] = state[2][sent:]
            if not len(state[2]):
                self._drop(sock)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(sock)

    def _answer(self, request: bytes) -> bytes:
        """The whole HTTP answer to one request head, from prometheus_client's WSGI app."""
        head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        parts = head[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        method, target, version = parts
        path, _, query = target.partition("?")
        environ = {"REQUEST_METHOD": method, "PATH_INFO": unquote(path), "QUERY_STRING": query,
                   "SERVER_PROTOCOL": version, "SERVER_NAME": "teft", "SERVER_PORT": str(self.server_port),
                   "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "wsgi.errors": io.StringIO()}
        for line in head[1:]:
            name, sep, value = line.partition(":")
            if sep:
                environ["HTTP_" + name.strip().upper().replace("-", "_")] = value.strip()
        started: list = []
        body = b"".join(self._app(environ, lambda status, headers, exc_info=None: started.extend((status, headers))))
        status, headers = started
        lines = [f"HTTP/1.0 {status}", f"Date: {formatdate(usegmt=True)}", *(f"{k}: {v}" for k, v in headers),
                 f"Content-Length: {len(body)}", "Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


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
