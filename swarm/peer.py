"""`python -m swarm.peer`: one process, one role (miner or validator), cycle after cycle until stopped.

Each cycle follows the clock: sync (hold the agreed Phi_c, announce), train (miners), commit, reveal,
evaluate (validators), reduce (everyone). No peer tells another what phase it is; every action is
tied to the phase window it belongs to, and anything that misses its window is skipped, not squeezed in.
The loop is swarm/protocol/cycle.py; what each role does is in swarm/roles/.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from swarm import cli
from swarm.errors import SwarmError

logger = logging.getLogger("swarm.peer")


def build_parser(prog: str = "python -m swarm.peer") -> argparse.ArgumentParser:
    from swarm.roles import ROLES

    p = cli.parser(prog, __doc__)
    p.add_argument("--role", required=True, choices=sorted(ROLES), help="miner: trains and submits; validator: "
                   "scores submissions by Proof-of-Loss and publishes signed rankings")
    p.add_argument("--config", required=True, help="run manifest YAML (the same file on every peer)")
    cli.flag(p, "initial-peers", nargs="*", default=[],
             help="multiaddrs of peers to join through (the JOIN lines printed by python -m bootstrap)")
    p.add_argument("--identity", required=True,
                   help="key file of this peer; created if missing (its directory must exist)")
    p.add_argument("--workdir", required=True, help="directory for checkpoints, payloads and progress (resumable)")
    cli.flag(p, "host-maddrs", nargs="+", default=["/ip4/127.0.0.1/tcp/0"],
             help="addresses to listen on (default /ip4/127.0.0.1/tcp/0; use 0.0.0.0 to accept others)")
    cli.flag(p, "announce-maddrs", nargs="*", default=None,
             help="public addresses to advertise, when they differ from the listening ones (NAT)")
    p.add_argument("--data", default=None, help="train on this data instead of the manifest's data.train")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's choice; use 1 when many peers share a machine)")
    cli.flag(p, "fetch-timeout", type=float, default=30.0,
             help="seconds to wait for one payload from one peer (default 30)")
    cli.flag(p, "startup-timeout", type=float, default=30.0,
             help="seconds to reach the initial peers before giving up (default 30)")
    cli.flag(p, "log-level", default="INFO", help="logging level (default INFO)")
    return p


def main(argv: list[str] | None = None, make_role: Callable | None = None,
         parser: argparse.ArgumentParser | None = None) -> int:
    """Run a peer until SIGINT/SIGTERM; `make_role` replaces the honest role (simulations only)."""
    args = (parser or build_parser()).parse_args(argv)
    cli.setup_logging(args.log_level, args.role)
    import transformers

    transformers.logging.disable_progress_bar()  # a peer's log is read as a log: no progress bars
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    stop = threading.Event()

    def on_signal(signum, _frame):
        if stop.is_set():
            raise KeyboardInterrupt
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    dht = net = None
    try:
        from swarm.net.dht import start_dht
        from swarm.net.identity import load_or_create
        from swarm.net.network import Network
        from swarm.protocol.cycle import Peer
        from swarm.protocol.manifest import load, run_id
        from swarm.protocol.runtime import describe, load_runtime
        from swarm.protocol.store import Store
        from swarm.roles import ROLES

        manifest = load(args.config)
        rid = run_id(manifest)
        identity_path = Path(args.identity)
        if not identity_path.parent.exists():
            raise SwarmError(f"the directory of --identity {identity_path} does not exist: create it first")
        identity = load_or_create(identity_path)
        store = Store(args.workdir)
        started = time.monotonic()  # join first: an unreachable bootstrap should fail before the model loads
        role = make_role or ROLES[args.role]
        hook = getattr(role, "record_validators", None)  # a role class; a plain factory keeps the defaults
        validators = hook(identity, rid, manifest.horizon()) if hook is not None else None
        dht = start_dht(identity, args.initial_peers, args.host_maddrs, args.announce_maddrs,
                        record_validators=validators, startup_timeout=args.startup_timeout, run_id=rid,
                        horizon=manifest.horizon())
        net = Network(dht, rid, store.find, args.fetch_timeout)
        rt = load_runtime(manifest, args.data, args.device)
        logger.info("run %s: %s", rid, describe(rt))
        logger.info("peer %s up in %.2fs at %s", identity.peer_key, time.monotonic() - started, " ".join(net.maddrs))
        Peer(role, rt, identity, dht, net, store, stop).run()
    except SwarmError as err:
        return cli.fail(str(err))
    except KeyboardInterrupt:
        pass
    finally:
        if net is not None:
            net.close()
        if dht is not None:
            dht.shutdown()
    logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
