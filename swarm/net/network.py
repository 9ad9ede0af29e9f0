"""A peer's P2P side: serve what its store holds by hash, and fetch what others hold, over libp2p streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from swarm.net.dht import visible_maddrs
from swarm.net.server import PayloadServer
from swarm.net.timesync import ClockSample, TimeServer, sample_clocks
from swarm.net.transfer import BackgroundLoop, FetchRequest, FetchResult, fetch_any, fetch_stream
from swarm.net.wire import TransferStats


class Network:
    """The payload server over the DHT's libp2p daemon, and the one fetch path every role uses."""

    def __init__(self, dht, run_id: str, lookup: Callable[[str], bytes | None], timeout: float):
        self.run_id, self.timeout = run_id, timeout
        self.stats = TransferStats()
        self.loop = BackgroundLoop()
        self.p2p = self.loop.run(dht.replicate_p2p(), timeout=30)
        self.server = self.loop.run(PayloadServer(self.p2p, lookup, run_id, self.stats).start(), timeout=30)
        self.time_server = self.loop.run(TimeServer(self.p2p).start(), timeout=30)
        self.maddrs = visible_maddrs(dht)

    def fetch(self, peers: list[str], digest: str, size: int, maddrs: dict[str, list[str]], exact: bool) -> bytes:
        """The bytes hashing to `digest` from the first of `peers` that serves them; TransferError if none."""
        return self.loop.run(fetch_any(self.p2p, peers, digest, size, self.timeout, run_id=self.run_id,
                                       stats=self.stats, maddrs=maddrs, exact=exact),
                             timeout=self.timeout * max(len(peers), 1) + 5)

    def fetch_stream(self, requests: list[FetchRequest], budget_s: float, max_parallel: int = 4,
                     timeout: float | None = None) -> Iterator[FetchResult]:
        """Several payloads at once under one wall-clock budget, each handed over as soon as it is final; a
        slow or silent peer costs its own slot only (for at most `timeout`, default the peer's fetch timeout)."""
        return fetch_stream(self.loop, self.p2p, requests, budget_s, max_parallel, timeout=timeout or self.timeout,
                            run_id=self.run_id, stats=self.stats)

    def clock_samples(self, peers: dict[str, list[str] | None], timeout: float = 3.0) -> list[ClockSample]:
        """How far each of `peers` (peer id -> maddrs) that answers in time is from this clock."""
        return self.loop.run(sample_clocks(self.p2p, peers, timeout), timeout=timeout + 5.0)

    def close(self) -> None:
        for step in (self.server.stop, self.time_server.stop, self.p2p.shutdown):
            try:
                self.loop.run(step(), timeout=5)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
        self.loop.close()

