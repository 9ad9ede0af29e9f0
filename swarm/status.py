"""`python -m swarm.status`: what a person asks first about a run, read from the DHT.

The run id, the current cycle and phase, the peers by role, and for the last finished cycle its
commits, rankings, merged miners and the agreed state hash.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

from swarm import cli
from swarm.errors import SwarmError


def collect(dht, manifest) -> dict:
    """The status as a dict (also what --json prints)."""
    from swarm.net.dht import dht_time
    from swarm.net.records import get_records
    from swarm.protocol.consensus import decide
    from swarm.protocol.manifest import run_id

    rid = run_id(manifest)
    clock = manifest.clock()
    pos = clock.where(dht_time())
    status = {"run_id": rid, "name": manifest.name, "cycle": pos.cycle, "phase": pos.phase,
              "seconds_left_in_phase": round(pos.seconds_left_in_phase, 1), "peers": {}, "last_cycle": None}
    if pos.cycle < 0:
        return status
    for c in (pos.cycle - 1, pos.cycle):
        if c < 0:
            continue
        for pid, signed in get_records(dht, rid, c, "peers").items():
            status["peers"][pid] = signed.record.role
    last = pos.cycle - 1
    if last >= 0:
        rankings = get_records(dht, rid, last, "ranking")
        decision = decide(rankings, manifest)
        states = Counter(s.record.state_hash for s in get_records(dht, rid, last, "state").values())
        status["last_cycle"] = {
            "cycle": last,
            "commits": sorted(get_records(dht, rid, last, "commit")),
            "rankings": {pid: len(s.record.entries) for pid, s in rankings.items()},
            "allowlisted_rankings": len(decision.validators),
            "quorum_met": decision.quorum_met,
            "merged": [{"miner": m.miner, "payload": m.payload_hash, "score": round(m.score, 5)}
                       for m in decision.merged],
            "state_hashes": dict(states.most_common()),
        }
    return status


def render(status: dict) -> str:
    roles = Counter(status["peers"].values())
    lines = [f"run {status['run_id']} ({status['name']})",
             f"cycle {status['cycle']}, phase {status['phase']} ({status['seconds_left_in_phase']}s left)",
             f"peers: {len(status['peers'])} ({', '.join(f'{n} {r}' for r, n in sorted(roles.items())) or 'none'})"]
    last = status["last_cycle"]
    if last:
        quorum = "met" if last["quorum_met"] else "NOT met"
        lines += [f"last cycle {last['cycle']}: {len(last['commits'])} commits, "
                  f"{last['allowlisted_rankings']} allowlisted rankings (quorum {quorum})",
                  "  merged: " + (", ".join(f"{m['miner'][:12]} ({m['score']})" for m in last["merged"]) or "none")]
        hashes = last["state_hashes"]
        if hashes:
            agreed, votes = next(iter(hashes.items()))
            lines.append(f"  agreed state {agreed[:16]} ({votes} of {sum(hashes.values())} peers)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m swarm.status", __doc__)
    parser.add_argument("--config", required=True, help="the run manifest")
    cli.flag(parser, "initial-peers", nargs="+", required=True,
                        help="multiaddrs to join through (JOIN lines of python -m bootstrap)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    cli.flag(parser, "startup-timeout", type=float, default=30.0,
             help="seconds to reach the initial peers (default 30)")
    args = parser.parse_args(argv)
    dht = None
    try:
        from swarm.net.dht import start_dht
        from swarm.net.identity import load_or_create
        from swarm.protocol.manifest import load, run_id

        manifest = load(args.config)
        with tempfile.TemporaryDirectory() as tmp:
            identity = load_or_create(Path(tmp) / "status.key")
            dht = start_dht(identity, args.initial_peers, startup_timeout=args.startup_timeout,
                            run_id=run_id(manifest), client_mode=True, check_identity_free=False)
            status = collect(dht, manifest)
        print(json.dumps(status, indent=2) if args.json else render(status))
    except SwarmError as err:
        return cli.fail(str(err))
    finally:
        if dht is not None:
            dht.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
