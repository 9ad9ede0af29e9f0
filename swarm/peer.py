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
from swarm.errors import SwarmError, TransferError

logger = logging.getLogger("swarm.peer")
ROLE_NAMES = ("miner", "validator")  # the keys of swarm.roles.ROLES, named here so --help imports nothing heavy


def build_parser(prog: str = "python -m swarm.peer") -> argparse.ArgumentParser:
    p = cli.parser(prog, __doc__)
    p.add_argument("--role", required=True, choices=ROLE_NAMES, help="miner: trains and submits; validator: "
                   "scores submissions by Proof-of-Loss and publishes signed rankings")
    p.add_argument("--config", required=True, help="run manifest YAML (the same file on every peer)")
    cli.flag(p, "initial-peers", nargs="*", default=[],
             help="multiaddrs of peers to join through (the JOIN lines printed by python -m bootstrap)")
    p.add_argument("--identity", required=True,
                   help="key file of this peer; created if missing, with its directory")
    p.add_argument("--workdir", required=True, help="directory for checkpoints, payloads and progress (resumable)")
    cli.flag(p, "host-maddrs", nargs="+", default=["/ip4/127.0.0.1/tcp/0"],
             help="addresses to listen on (default /ip4/127.0.0.1/tcp/0: this machine only, a free port; "
             "use /ip4/0.0.0.0/tcp/PORT to accept peers from other machines)")
    cli.flag(p, "announce-maddrs", nargs="*", default=None,
             help="public addresses to advertise, when they differ from the listening ones (NAT)")
    cli.flag(p, "client-mode", action="store_true",
             help="miners behind a NAT that nobody can dial (no port forward): join the DHT as a client, which "
             "asks and stores but holds no records for others, so the swarm's records stay on peers every peer "
             "can reach. Payloads still reach the validators, over the connections this peer dials to them")
    p.add_argument("--data", default=None, help="train on this data instead of the manifest's data.train")
    cli.flag(p, "validation-data", default=None, metavar="PATH",
             help="validators: private held-out data of the target domain to score Proof-of-Loss on (never "
             "published, so no miner can train on it); required when the manifest sets data.private_validation")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default=None,
                   help="weights' dtype, overriding the manifest's base_model.dtype (auto: the checkpoint's own)")
    p.add_argument("--background", choices=("bf16", "int8", "4bit"), default=None,
                   help="miners: hold the experts this run does not train in the checkpoint's dtype (bf16) or "
                   "frozen in int8 / 4 bits (a light miner), overriding the manifest's inner.background")
    cli.flag(p, "pack", default=None, metavar="FILE",
             help="the run's miner pack (python -m teft pack; the manifest pins it by hash): served to light miners "
             "that join without one; a light miner of the pack's background loads it instead of the base model. "
             "A light miner without it fetches it from the validators and initial peers at startup")
    cli.compute_flags(p)
    cli.flag(p, "fetch-timeout", type=float, default=30.0,
             help="seconds to wait for one payload from one peer (default 30)")
    cli.startup_timeout_flag(p)
    cli.metrics_flags(p)
    cli.flag(p, "log-level", default="INFO", help="logging level (default INFO)")
    return p


def main(argv: list[str] | None = None, make_role: Callable | None = None,
         parser: argparse.ArgumentParser | None = None) -> int:
    """Run a peer until SIGINT/SIGTERM; `make_role` replaces the honest role (simulations only)."""
    args = (parser or build_parser()).parse_args(argv)
    cli.setup_logging(args.log_level, args.role)
    from swarm.protocol.manifest import load, run_id
    from swarm.protocol.store import Store, check_workdir

    try:  # the manifest and the flags first: bad input fails in a second, before torch or hivemind load
        manifest = load(args.config)
        if args.client_mode and args.role != "miner":
            raise SwarmError("--client-mode is for miners: a validator must be reachable (miners dial it, joiners "
                             "fetch the agreed state from it); run it on a public address and drop the flag")
        if args.role == "validator" and manifest.data.private_validation and not args.validation_data:
            raise SwarmError("this run scores on private held-out data: pass --validation-data PATH (e.g. made by "
                             "python scripts/build_corpora.py --heldout-math PATH)")
        if args.validation_data and args.role != "validator":
            raise SwarmError("--validation-data is for validators: drop it for a miner")
        if args.background is not None and args.role != "miner":
            raise SwarmError("--background is for miners: validators always score on the full model; drop it")
        check_workdir(args.workdir)
        device = cli.resolve_compute(args.device, args.threads)  # then what needs torch: still nothing created
        from swarm.net.identity import load_or_create

        cli.identity_dir(args.identity)  # nothing to make when the key exists: a bad one is refused here
        identity = load_or_create(Path(args.identity).expanduser())
        pack = read_pack_file(args.pack, manifest) if args.pack else None
        store = Store(args.workdir)  # the work tree last, once nothing else can refuse the flags
        if pack is not None:
            store.save_pack(pack, manifest.pack.sha256)  # checked above; served by hash from now on
    except SwarmError as err:
        return cli.fail(str(err))
    import transformers

    transformers.logging.disable_progress_bar()  # a peer's log is read as a log: no progress bars
    stop = threading.Event()

    def on_signal(signum, _frame):
        if stop.is_set():
            raise KeyboardInterrupt
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    dht = net = server = None
    try:
        from swarm.net.dht import start_dht
        from swarm.net.identity import peer_key_of
        from swarm.net.network import Network
        from swarm.protocol.cycle import Peer
        from swarm.protocol.metrics import Metrics
        from swarm.protocol.runtime import describe, load_runtime
        from swarm.roles import ROLES

        rid = run_id(manifest)
        metrics = Metrics(args.role, rid, identity.peer_key)
        if args.metrics_port is not None:  # before anything slow, so a busy port fails at once
            server = metrics.serve(args.metrics_port, args.metrics_host)
        started = time.monotonic()  # join first: an unreachable bootstrap should fail before the model loads
        role = make_role or ROLES[args.role]
        hook = getattr(role, "record_validators", None)  # a role class; a plain factory keeps the defaults
        from swarm.net.validation import run_horizon

        horizon = run_horizon(manifest)  # the cycle window, expiry cap and allowlists every DHT node enforces
        validators = hook(identity, rid, horizon) if hook is not None else None
        dht = start_dht(identity, args.initial_peers, args.host_maddrs, args.announce_maddrs,
                        record_validators=validators, startup_timeout=args.startup_timeout, run_id=rid,
                        horizon=horizon, client_mode=args.client_mode)
        net = Network(dht, rid, store.find, args.fetch_timeout, budget_window_s=manifest.clock().cycle_length,
                      priority={peer_key_of(v) for v in manifest.validators})  # validators: reserved lanes
        check_clock(net, dht, manifest, rid, args.initial_peers, identity.peer_key)
        background = (args.background or manifest.inner.background) if args.role == "miner" else "bf16"
        if manifest.pack is not None and background == manifest.pack.background:  # a light miner of the pack
            pack = pack or store.load_pack(manifest.pack.sha256) or fetch_pack(net, dht, manifest, rid,
                                                                                args.initial_peers, store)
        else:
            pack = None
        rt = load_runtime(manifest, args.data, device, args.validation_data, args.dtype, background, pack)
        logger.info("run %s: %s", rid, describe(rt))
        logger.info("peer %s up in %.2fs at %s", identity.peer_key, time.monotonic() - started, " ".join(net.maddrs))
        peer = Peer(role, rt, identity, dht, net, store, stop, metrics=metrics)
        peer.remember(args.initial_peers)  # validators among them are met each cycle, with or without the DHT
        peer.run()
    except SwarmError as err:
        return cli.fail(str(err))
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.shutdown()
        if net is not None:
            net.close()
        if dht is not None:
            dht.shutdown()
    logger.info("stopped")
    return 0


def read_pack_file(path: str, manifest) -> bytes:
    """The --pack file's bytes, once they are the pack this run pins."""
    from swarm.protocol.runtime import check_pack

    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as err:
        raise SwarmError(f"--pack {path}: {err.strerror or err}: give the file python -m teft pack wrote") from None
    try:
        check_pack(manifest, data)
    except SwarmError as err:
        raise SwarmError(f"--pack {path}: {err}") from None
    return data


PACK_WAIT_S = 300.0  # a light miner started before any holder of the pack is up asks again for this long
PACK_RETRY_S = 5.0


def fetch_pack(net, dht, manifest, rid: str, initial_peers: list[str], store, wait_s: float = PACK_WAIT_S) -> bytes:
    """The run's pack from the swarm: in pieces from the allowlisted validators and the initial peers at once, each
    piece checked against the pinned pieces root, so a holder that sends other bytes is out after one range and
    a fetch that stopped resumes from WORKDIR/partial (load_runtime then checks what the pack holds against the
    manifest). While no holder answers (the validators are not up yet, or restarting), asked again every
    PACK_RETRY_S for `wait_s`."""
    from swarm.net.identity import peer_key_of

    spec = manifest.pack
    validators = [peer_key_of(v) for v in manifest.validators]
    chosen = [m.rsplit("/p2p/", 1)[-1] for m in initial_peers]
    # only peers someone chose to trust: the peers records only give their addresses (every key that announced
    # itself, a thousand free ones included, would otherwise be a holder to try, each for the fetch timeout)
    holders = [*validators, *(p for p in chosen if p not in validators)]
    logger.info("fetching the run's miner pack %s (%.1f MiB) from %d peer(s)", spec.sha256[:12], spec.bytes / 2**20,
                len(holders))
    started = time.monotonic()
    while True:
        try:
            data = net.fetch_pieces(holders, spec.sha256, spec.pieces, spec.bytes,
                                    announced(dht, manifest, rid, initial_peers),
                                    partial=store.partial_path(spec.sha256))
            break
        except TransferError as err:
            left = started + wait_s - time.monotonic()
            if left <= 0:
                raise SwarmError(f"could not fetch the run's miner pack in {wait_s:g}s: {err}; pass --pack FILE if "
                                 "you have it") from None
            logger.warning("no holder of the run's miner pack served it yet (%s); asking again in %gs, %.0fs left",
                           err, PACK_RETRY_S, left)
            time.sleep(min(PACK_RETRY_S, left))
    store.save_pack(data, spec.sha256)  # verified in transit; served to the next light miner, no fetch on restart
    logger.info("miner pack %s in %.1fs", spec.sha256[:12], time.monotonic() - started)
    return data


def announced(dht, manifest, rid: str, initial_peers: list[str]) -> dict[str, list[str]]:
    """peer id -> multiaddrs: the initial peers', then what this and the last cycle's peers records announce."""
    from swarm.net.dht import dht_time
    from swarm.net.records import get_records

    maddrs: dict[str, list[str]] = {m.rsplit("/p2p/", 1)[-1]: [m] for m in initial_peers}
    cycle = max(manifest.clock().where(dht_time()).cycle, 0)
    for c in {max(cycle - 1, 0), cycle}:
        try:
            for pid, signed in get_records(dht, rid, c, "peers").items():
                maddrs.setdefault(pid, list(signed.record.maddrs))
        except SwarmError:
            pass
    return maddrs


def check_clock(net, dht, manifest, rid: str, initial_peers: list[str], me: str) -> None:
    """Refuse to run on a clock that is off the swarm's by more than a quarter of the shortest phase, as told by
    the peers this operator trusts: the initial peers given and the allowlisted validators announced so far."""
    from swarm.net.identity import peer_key_of
    from swarm.net.timesync import clock_verdict

    chosen = {m.rsplit("/p2p/", 1)[-1] for m in initial_peers} | {peer_key_of(v) for v in manifest.validators}
    trusted: dict[str, list[str] | None] = {pid: maddrs for pid, maddrs in announced(dht, manifest, rid, initial_peers)
                                           .items() if pid in chosen and pid != me}
    if not trusted:
        return
    tolerance = manifest.timings.max_clock_skew()
    offset, problem = clock_verdict(net.clock_samples(trusted), tolerance)
    if problem:
        raise SwarmError(problem)
    if offset is None:
        logger.warning("could not compare this clock with any trusted peer's (%d asked)", len(trusted))
    else:
        logger.info("clock checked: the trusted peers' median is %+.3fs from ours (tolerance %gs)", offset, tolerance)


if __name__ == "__main__":
    sys.exit(main())
