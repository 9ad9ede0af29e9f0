"""`python -m bootstrap`: a DHT-only entry node that validates records like every peer.

Prints `JOIN <multiaddr>` lines (grep them), then idles until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from collections import Counter
from types import FrameType

from swarm import cli
from swarm.errors import SwarmError
from swarm.net.dht import dht_time, start_dht, visible_maddrs
from swarm.net.identity import load_or_create
from swarm.net.records import get_records
from swarm.net.timesync import TimeServer
from swarm.net.transfer import BackgroundLoop
from swarm.net.validation import run_horizon
from swarm.protocol.manifest import load, run_id
from swarm.protocol.metrics import Metrics

logger = logging.getLogger("bootstrap")


def _maddr_list(values: list[str] | None) -> list[str]:
    """Accept space- or comma-separated multiaddrs."""
    return [m for value in values or [] for m in value.split(",") if m.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the bootstrap node."""
    parser = cli.parser(
        "python -m bootstrap",
        "Run a DHT-only entry node for a TEFT swarm. It prints the multiaddrs peers join "
        "with as lines starting with 'JOIN ' and runs until SIGINT or SIGTERM.",
    )
    cli.flag(
        parser,
        "host-maddrs",
        nargs="+",
        default=["/ip4/0.0.0.0/tcp/31337"],
        help="multiaddrs to listen on (default: /ip4/0.0.0.0/tcp/31337, every interface on the well-known port, "
        "since peers of other machines join here; /ip4/127.0.0.1/tcp/0 for a local free port)",
    )
    cli.flag(
        parser,
        "announce-maddrs",
        nargs="+",
        default=None,
        help="public multiaddrs to announce when behind NAT (explicit ports only)",
    )
    cli.flag(
        parser,
        "identity",
        default="bootstrap.key",
        help="private key file (PEM) giving the node a stable peer id; created if missing (default: bootstrap.key)",
    )
    cli.flag(
        parser,
        "initial-peers",
        nargs="*",
        default=[],
        help="multiaddrs (with /p2p/<peer id>) of other bootstrap nodes to join",
    )
    cli.flag(
        parser,
        "config",
        default=None,
        help="run manifest YAML; when given, only records of that run, in its cycle window and (for validator "
        "records) from its allowlist are accepted",
    )
    cli.startup_timeout_flag(parser)
    cli.metrics_flags(parser)
    cli.flag(
        parser,
        "log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity on stderr (default: INFO)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start, print JOIN lines, idle until a signal, shut down."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("got %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        manifest = load(args.config) if args.config else None
        run = run_id(manifest) if manifest else None
        cli.identity_dir(args.identity)
        identity = load_or_create(args.identity)
        metrics = Metrics("bootstrap", run or "", identity.peer_key)
        server = metrics.serve(args.metrics_port, args.metrics_host) if args.metrics_port is not None else None
        dht = start_dht(
            identity,
            initial_peers=_maddr_list(args.initial_peers),
            host_maddrs=_maddr_list(args.host_maddrs),
            announce_maddrs=_maddr_list(args.announce_maddrs) or None,
            startup_timeout=args.startup_timeout,
            run_id=run,
            horizon=run_horizon(manifest) if manifest else None,  # its window and allowlists, as every peer's
        )
    except SwarmError as e:
        return cli.fail(str(e))
    loop, p2p, time_server = BackgroundLoop(), None, None
    try:  # answer peers' clock checks (swarm/net/timesync.py): a peer trusts the initial peers it was given
        p2p = loop.run(dht.replicate_p2p(), timeout=30)
        time_server = loop.run(TimeServer(p2p).start(), timeout=30)
        for maddr in visible_maddrs(dht):
            print(f"JOIN {maddr}", flush=True)
        logger.info("bootstrap node %s ready%s", identity.peer_key, f" for run {run}" if run else "")
        where = None
        while not stop.wait(1.0):
            if not dht.is_alive():
                logger.error("the DHT process died; exiting")
                return 1
            if manifest is not None:
                where = watch(dht, manifest, run, metrics, where)
        return 0
    finally:
        if server is not None:
            server.shutdown()
        for step in (time_server and time_server.stop, p2p and p2p.shutdown):
            with contextlib.suppress(Exception):
                if step is not None:
                    loop.run(step(), timeout=5)
        loop.close()
        dht.shutdown()


def watch(dht, manifest, run: str, metrics: Metrics, last: tuple[int, str] | None) -> tuple[int, str]:
    """On each phase change, set the run's cycle and phase and count the peers announced for it."""
    pos = manifest.clock().where(dht_time())
    now = (pos.cycle, pos.phase)
    if now != last:
        metrics.set_phase(pos.cycle, pos.phase)
        started = time.monotonic()
        try:
            found = get_records(dht, run, max(pos.cycle, 0), "peers")
        except SwarmError as err:
            logger.warning("could not read the peers records: %s", err)
            found = {}
        metrics.observe_dht("get", time.monotonic() - started)
        metrics.set_peers(dict(Counter(s.record.role for s in found.values())))
    return now


if __name__ == "__main__":
    sys.exit(main())
