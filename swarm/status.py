"""`python -m swarm.status`: what a person (or a script, with --json) asks first about a run, read from the DHT.

The run id, the current cycle and phase, the peers by role (before genesis: the peers waiting for it), this
cycle's commits and reveals so far, and for the last finished cycle its commits, rankings, merged miners,
agreed state hash and which of the run's allowlisted validators stayed silent. `--watch` refreshes at every
phase change, `--count N` times or until Ctrl-C; with --json each refresh is one JSON document on its own
line (JSON Lines), and nothing else goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from swarm import cli
from swarm.errors import SwarmError


def collect(dht, manifest, now: float | None = None) -> dict:
    """The status as a dict (what --json prints); `now` is DHT time (default: the clock's)."""
    from swarm.net.dht import dht_time
    from swarm.net.identity import peer_key_of
    from swarm.protocol.manifest import run_id

    rid = run_id(manifest)
    pos = manifest.clock().where(dht_time() if now is None else now)
    status = {"run_id": rid, "name": manifest.name, "cycle": pos.cycle, "phase": pos.phase,
              "seconds_left_in_phase": round(pos.seconds_left_in_phase, 1), "peers": {}, "peers_by_role": {},
              "validators": [peer_key_of(k) for k in manifest.validators], "current_cycle": None, "last_cycle": None}
    read = _reader(dht, rid)
    for c in ((pos.cycle - 1, pos.cycle) if pos.cycle >= 0 else (0,)):  # before genesis peers announce cycle 0
        if c >= 0:
            status["peers"].update({pid: s.record.role for pid, s in read(c, "peers").items()})
    status["peers_by_role"] = dict(sorted(Counter(status["peers"].values()).items()))
    if pos.cycle >= 0:
        status["current_cycle"] = {"cycle": pos.cycle, **{kind: sorted(read(pos.cycle, kind)) for kind in
                                                          ("commit", "reveal", "seed-commit", "seed-reveal")}}
    if pos.cycle >= 1:
        status["last_cycle"] = finished_cycle(read, manifest, pos.cycle - 1)
    return status


def _reader(dht, rid: str) -> Callable:
    from swarm.net.records import get_records

    return lambda cycle, kind: get_records(dht, rid, cycle, kind)


def finished_cycle(read: Callable, manifest, c: int) -> dict:
    """A finished cycle: commits, rankings, the merge decision, state hashes and the silent validators."""
    from swarm.net.identity import peer_key_of
    from swarm.protocol.consensus import agree_on_state, decide

    rankings = read(c, "ranking")
    decision = decide(rankings, manifest)
    states = read(c, "state")
    vote = agree_on_state(states, manifest.validators, manifest.quorum)
    ranked = {s.owner for s in rankings.values()}
    return {
        "cycle": c,
        "commits": sorted(read(c, "commit")),
        "rankings": {pid: len(s.record.entries) for pid, s in rankings.items()},
        "ranked": {pid: {m: round(score, 5) for m, _, _, score in s.record.entries} for pid, s in rankings.items()},
        "allowlisted_rankings": len(decision.validators),
        "quorum": manifest.quorum,
        "quorum_met": decision.quorum_met,
        "merged": [{"miner": m.miner, "payload": m.payload_hash, "score": round(m.score, 5)} for m in decision.merged],
        "state_hashes": dict(Counter(s.record.state_hash for s in states.values()).most_common()),
        "agreed_hash": vote.agreed,
        "state_votes": {peer_key_of(v): h for v, h in sorted(vote.votes.items())},
        "dissenting_validators": [peer_key_of(v) for v in vote.dissent],
        "validators_without_state": [peer_key_of(v) for v in vote.silent],
        "silent_validators": sorted(peer_key_of(k) for k in manifest.validators if k not in ranked),
    }


def render(status: dict) -> str:
    """The status for a person: a few lines."""
    roles = status.get("peers_by_role") or Counter(status["peers"].values())
    when = (f"cycle {status['cycle']}, phase {status['phase']}" if status["cycle"] >= 0
            else "before genesis")
    lines = [f"run {status['run_id']} ({status['name']})",
             f"{when} ({status['seconds_left_in_phase']}s left)",
             f"peers{' waiting' if status['cycle'] < 0 else ''}: {len(status['peers'])} "
             f"({', '.join(f'{n} {r}' for r, n in sorted(roles.items())) or 'none'})"]
    now = status.get("current_cycle")
    if now:
        lines.append(f"this cycle so far: {len(now['commit'])} commits, {len(now['reveal'])} reveals, "
                     f"{len(now['seed-commit'])} validator seed commits")
    last = status["last_cycle"]
    if last:
        quorum = "met" if last["quorum_met"] else "NOT met"
        lines += [f"last cycle {last['cycle']}: {len(last['commits'])} commits, {last['allowlisted_rankings']} "
                  f"allowlisted rankings (quorum {last.get('quorum', '?')} {quorum})",
                  "  merged: " + (", ".join(f"{m['miner'][:12]} ({m['score']})" for m in last["merged"]) or "none")]
        for pid, ranked in sorted(last.get("ranked", {}).items()):
            shown = ", ".join(f"{m[:8]} {s}" for m, s in sorted(ranked.items(), key=lambda kv: -kv[1])[:6])
            lines.append(f"  ranking of {pid[:12]}: {shown or 'nothing positive'}")
        hashes = last["state_hashes"]
        if last.get("agreed_hash"):
            lines.append(f"  agreed state {last['agreed_hash'][:16]} ({hashes.get(last['agreed_hash'], 0)} of "
                         f"{sum(hashes.values())} peers)")
        elif last.get("state_votes"):
            shown = ", ".join(f"{h[:12]} x{n}" for h, n in Counter(last["state_votes"].values()).most_common())
            lines.append(f"  NO agreed state: allowlisted validators published {shown} (a strict quorum of "
                         f"{last.get('quorum', '?')} needed); peers carry the previous state forward")
        dissent = last.get("dissenting_validators") or []
        if dissent:
            lines.append(f"  validators that published another state: {', '.join(v[:12] for v in dissent)}")
        quiet = last.get("validators_without_state") or []
        if quiet:
            lines.append(f"  validators that published no state: {', '.join(v[:12] for v in quiet)}")
        silent = last.get("silent_validators") or []
        lines.append(f"  silent validators: {', '.join(v[:12] for v in silent) if silent else 'none'}")
    return "\n".join(lines)


def follow(get_status: Callable[[], dict], count: int | None, emit: Callable[[dict], None],
           sleep: Callable[[float], None] = time.sleep) -> int:
    """Emit a status now and again just after each phase change, `count` times (None: until interrupted)."""
    shown = 0
    while count is None or shown < count:
        status = get_status()
        emit(status)
        shown += 1
        if count is not None and shown >= count:
            break
        sleep(max(status["seconds_left_in_phase"], 0.0) + 0.25)  # a moment in: the first records have landed
    return shown


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("python -m swarm.status", __doc__)
    parser.add_argument("--config", required=True, help="the run manifest")
    cli.flag(parser, "initial-peers", nargs="+", required=True,
             help="multiaddrs to join through (JOIN lines of python -m bootstrap)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document (with --watch: one per line) and nothing else on stdout")
    parser.add_argument("--watch", action="store_true", help="refresh at every phase change until Ctrl-C")
    parser.add_argument("--count", type=cli.positive_int, default=None,
                        help="with --watch: stop after this many refreshes (default: until Ctrl-C)")
    cli.startup_timeout_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.count is not None and not args.watch:
        return cli.fail("--count only applies with --watch: add --watch or drop --count")
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

        def emit(status: dict) -> None:
            if args.json:
                print(json.dumps(status, indent=None if args.watch else 2), flush=True)
            else:
                print(render(status) + ("\n" if args.watch else ""), flush=True)

        follow(lambda: collect(dht, manifest), args.count if args.watch else 1, emit)
    except SwarmError as err:
        return cli.fail(str(err))
    except KeyboardInterrupt:
        pass
    finally:
        if dht is not None:
            dht.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
