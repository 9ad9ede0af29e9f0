"""A peer's P2P side: serve what its store holds by hash, and fetch what others hold, over libp2p streams."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from swarm.net.dht import ping_nodes, visible_maddrs
from swarm.net.fetchmany import FetchRequest, FetchResult, fetch_stream
from swarm.net.multisource import fetch_pieces
from swarm.net.server import PayloadServer
from swarm.net.timesync import ClockSample, TimeServer, sample_clocks
from swarm.net.transfer import MIN_FRAME_RATE, BackgroundLoop, connect_all, fetch_first
from swarm.net.wire import BUDGET_WINDOW_S, TransferStats


class Network:
    """The payload server over the DHT's libp2p daemon, and the one fetch path every role uses."""

    def __init__(self, dht, run_id: str, lookup: Callable[[str], bytes | None], timeout: float, *,
                 priority: Iterable[str] = (), budget_window_s: float = BUDGET_WINDOW_S):
        """`priority`: the peer ids the payload server serves from reserved lanes, exempt from its per-address
        caps and byte budgets (the allowlisted validators); `budget_window_s`: the budgets' window (a cycle)."""
        self.run_id, self.timeout, self.dht = run_id, timeout, dht
        self.stats = TransferStats()
        self.loop = BackgroundLoop()
        self.p2p = self.loop.run(dht.replicate_p2p(), timeout=30)
        server = PayloadServer(self.p2p, lookup, run_id, self.stats, priority=priority, budget_window_s=budget_window_s)
        self.server = self.loop.run(server.start(), timeout=30)
        self.time_server = self.loop.run(TimeServer(self.p2p).start(), timeout=30)
        self.maddrs = visible_maddrs(dht)

    def fetch(self, peers: list[str], digest: str, size: int, maddrs: dict[str, list[str]], exact: bool,
              on_failure: Callable[[str, str], None] | None = None, max_parallel: int = 2) -> bytes:
        """The bytes hashing to `digest` from whichever of `peers` serves them first, asking up to max_parallel
        at once in the order given; TransferError if none. on_failure hears of each holder that failed."""
        rounds = -(-max(len(peers), 1) // max_parallel)
        return self.loop.run(fetch_first(self.p2p, peers, digest, size, self.timeout, run_id=self.run_id,
                                         max_parallel=max_parallel, stats=self.stats, maddrs=maddrs, exact=exact,
                                         on_failure=on_failure),
                             timeout=self.timeout * rounds + 10)

    def fetch_pieces(self, peers: list[str], digest: str, root: str, size: int, maddrs: dict[str, list[str]],
                     partial: Path | None = None, on_failure: Callable[[str, str], None] | None = None) -> bytes:
        """The object hashing to `digest` in pieces from all of `peers` at once, each piece checked against the
        piece manifest that hashes to `root` (swarm/net/multisource.py); kept in `partial` on the way, so a
        later call resumes. TransferError once no holder is left."""
        # each request is bounded by the fetch timeout and the stall rules; this bounds the whole, at the
        # slowest rate a range may move and with every holder failing once
        bound = self.timeout * (len(peers) + 2) + size / MIN_FRAME_RATE
        return self.loop.run(fetch_pieces(self.p2p, peers, digest, root, size, self.timeout, run_id=self.run_id,
                                          stats=self.stats, maddrs=maddrs, partial=partial, on_failure=on_failure),
                             timeout=bound)

    def fetch_stream(self, requests: list[FetchRequest], budget_s: float, max_parallel: int = 4,
                     timeout: float | None = None, on_data: Callable[[bytes], object] | None = None
                     ) -> Iterator[FetchResult]:
        """Several payloads at once under one wall-clock budget, each handed over as soon as it is final; a
        slow or silent peer costs its own slot only (for at most `timeout`, default the peer's fetch timeout).
        With `on_data` (which sees each verified payload on arrival, before the reader does: it keeps them),
        this peer's server answers "not yet" for a payload still on its way, so that others wait for it."""
        return fetch_stream(self.loop, self.p2p, requests, budget_s, max_parallel, timeout=timeout or self.timeout,
                            run_id=self.run_id, stats=self.stats, on_data=on_data,
                            pending=self.server.pending if on_data is not None else None)

    def connect(self, peers: dict[str, list[str] | None], timeout: float = 5.0) -> dict[str, str | None]:
        """Dial each of `peers` (peer id -> maddrs) at once: None for each connected now, else why not."""
        return self.loop.run(connect_all(self.p2p, peers, timeout), timeout=timeout + 5.0)

    def connected(self, timeout: float = 3.0) -> set[str]:
        """The peer ids this peer holds a connection to now (p2pd's list); empty if the daemon does not answer."""
        async def listed() -> set[str]:
            return {str(info.peer_id) for info in await self.p2p.list_peers()}

        try:
            return self.loop.run(listed(), timeout=timeout)
        except Exception:  # noqa: BLE001 - an ordering hint only: without it every key is treated alike
            return set()

    def meet(self, peers: dict[str, list[str] | None], timeout: float = 3.0) -> dict[str, str | None]:
        """connect() to each of `peers`, then ping the DHT node of each connected one, so both routing tables
        hold the other: None for each met, else why not."""
        result = self.connect(peers, timeout)
        answered = ping_nodes(self.dht, [p for p, why in result.items() if why is None])
        return {p: why or (None if p in answered else "its DHT node did not answer a ping")
                for p, why in result.items()}

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

