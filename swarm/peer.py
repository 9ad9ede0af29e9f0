"""`python -m swarm.peer`: one process, one role (miner or validator), cycle after cycle until stopped.

Each cycle follows the clock: sync (hold the agreed Phi_c, announce), train (miners), commit, reveal,
evaluate (validators), reduce (everyone). No peer tells another what phase it is; every action is
tied to the phase window it belongs to, and anything that misses its window is skipped, not squeezed in.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from swarm import records
from swarm.consensus import Entry, bundle, decide, reduce, unbundle
from swarm.errors import SwarmError
from swarm.identity import Identity, load_or_create, normalize_public_key, peer_key_of
from swarm.store import Progress, Store
from swarm.transfer import TransferError, TransferStats
from teft.state import from_bytes, state_hash

VERSION = "0.1.0"
ROLES = ("miner", "validator")
logger = logging.getLogger("swarm.peer")


@dataclass
class CycleLog:
    """What one cycle did, written as one JSON line to metrics.jsonl and summarised in the log."""

    cycle: int
    role: str
    peer: str
    adversary: str | None = None
    submitted: str | None = None
    train_loss: list[float] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    base_loss: float | None = None
    rankings: dict[str, dict[str, float]] = field(default_factory=dict)  # validator -> miner -> score
    medians: dict[str, float] = field(default_factory=dict)  # miner -> combined score of its best payload
    merged: list[str] = field(default_factory=list)
    quorum_met: bool = False
    state_hash: str = ""
    agreed_hash: str = ""
    target_loss: float | None = None  # of Phi_{c+1}, on fixed blocks (validators)
    general_loss: float | None = None
    start_target_loss: float | None = None  # of Phi_c, measured once when a validator starts
    start_general_loss: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    note: str = ""


class Peer:
    """The protocol loop of one peer; the network and the model are handed in ready."""

    def __init__(self, role: str, rt, identity: Identity, dht, net, store: Store, stop: threading.Event,
                 adversary: str | None = None):
        from swarm.manifest import run_id

        self.role, self.rt, self.identity, self.dht, self.net, self.store = role, rt, identity, dht, net, store
        self.stop, self.adversary = stop, adversary
        self.manifest = rt.manifest
        self.run_id = run_id(self.manifest)
        self.clock = self.manifest.clock()
        self.me = identity.peer_key
        self.allowlist = set(self.manifest.validators)  # the manifest stores keys normalised
        self.cycle = -1  # the cycle whose start state we hold
        self.state = rt.initial_state
        self.momentum: dict = {}
        self.checkpoint = b""
        self.progress = Progress()
        self.my_seed: bytes = b""
        self.my_payload: tuple[str, bytes] | None = None
        self.old_payloads: list[str] = []  # for the replay adversary
        self.log = CycleLog(0, role, self.me)

    # -- time -----------------------------------------------------------------------------------
    def now(self) -> float:
        from swarm.dhtnode import dht_time

        return dht_time()

    def wait_until(self, t: float) -> bool:
        """Sleep until DHT time t; False if the peer is stopping."""
        while not self.stop.is_set():
            left = t - self.now()
            if left <= 0:
                return True
            self.stop.wait(min(left, 0.25))
        return False

    def phase_window(self, cycle: int, phase: str) -> tuple[float, float]:
        return self.clock.phase_start(cycle, phase), self.clock.phase_end(cycle, phase)

    def enter(self, cycle: int, phase: str) -> bool:
        """Wait for a phase to begin; log the change. False if stopping or the phase is already over."""
        start, end = self.phase_window(cycle, phase)
        if not self.wait_until(start):
            return False
        if self.now() >= end:
            return False
        self.announce_phase(cycle, phase)
        return True

    def announce_phase(self, cycle: int, phase: str) -> None:
        logger.info("run %s cycle %d phase %s role %s", self.run_id, cycle, phase, self.role)

    def expiration(self, cycle: int) -> float:
        return self.clock.cycle_start(cycle + 3)

    # -- records --------------------------------------------------------------------------------
    def put(self, cycle: int, kind: str, value) -> bool:
        try:
            return records.store_record(self.dht, self.run_id, cycle, kind, value, self.identity,
                                        self.expiration(cycle))
        except SwarmError as err:
            logger.warning("could not store %s record for cycle %d: %s", kind, cycle, err)
            return False

    def get(self, cycle: int, kind: str) -> dict:
        """Records by owner peer id (the libp2p id of the owner's key)."""
        try:
            found = records.get_records(self.dht, self.run_id, cycle, kind)
        except SwarmError as err:
            logger.warning("could not read %s records for cycle %d: %s", kind, cycle, err)
            return {}
        out = {}
        for owner, record in found.items():
            try:
                out[peer_key_of(owner)] = (normalize_public_key(owner), record)
            except SwarmError:
                continue
        return out

    def addresses(self, cycle: int) -> dict[str, list[str]]:
        """peer id -> multiaddrs, from this and the previous cycle's peers records."""
        found: dict[str, list[str]] = {}
        for c in (cycle - 1, cycle):
            if c >= 0:
                for pid, (_, rec) in self.get(c, "peers").items():
                    found[pid] = list(rec.maddrs)
        return found

    def validators_of(self, recs: dict) -> dict:
        return {pid: v for pid, v in recs.items() if v[0] in self.allowlist}

    # -- state ----------------------------------------------------------------------------------
    def adopt(self, cycle: int, data: bytes) -> None:
        self.state, self.momentum = unbundle(data)
        self.checkpoint, self.cycle = data, cycle
        digest = self.store.save_checkpoint(cycle, data)
        self.progress.cycle, self.progress.checkpoint_hash = cycle, digest
        self.store.save_progress(self.progress)
        self.store.prune(cycle)

    def resume(self) -> None:
        """Pick up the stored checkpoint, or start from Phi_0."""
        progress = self.store.load_progress()
        if progress is not None:
            data = self.store.load_checkpoint(progress.cycle, progress.checkpoint_hash)
            if data is not None:
                self.progress = progress
                self.adopt(progress.cycle, data)
                logger.info("resumed at cycle %d with state %s", self.cycle, progress.checkpoint_hash[:12])
                return
            logger.warning("stored checkpoint of cycle %d is missing or corrupted; resyncing", progress.cycle)
        self.progress = progress or Progress()
        self.adopt(0, bundle(self.rt.initial_state, None))
        logger.info("starting from Phi_0 (%s)", self.progress.checkpoint_hash[:12])

    def agreed_hash(self, cycle: int) -> tuple[str | None, list[str]]:
        """The Phi_{cycle+1} hash most allowlisted validators published (else most peers), and its holders."""
        recs = self.get(cycle, "state")
        if not recs:
            return None, []
        voters = self.validators_of(recs) or recs
        counts = Counter(rec.state_hash for _, rec in voters.values())
        best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        holders = sorted(pid for pid, (_, rec) in recs.items() if rec.state_hash == best)
        return best, holders

    def fetch(self, digest: str, holders: list[str], cycle: int, max_size: int, exact: bool) -> bytes:
        local = self.store.find(digest)
        if local is not None:
            return local
        holders = [h for h in holders if h != self.me]
        return self.net.fetch_any(holders, digest, max_size, self.addresses(cycle), exact=exact)

    def sync_to(self, cycle: int) -> bool:
        """Hold the agreed Phi_cycle: keep ours if it matches the quorum, else download it by hash."""
        if cycle == 0:
            return self.cycle == 0
        digest, holders = self.agreed_hash(cycle - 1)
        if digest is None:
            return self.cycle == cycle
        if self.cycle == cycle and digest == self.progress.checkpoint_hash:
            return True
        why = "behind" if self.cycle != cycle else "disagrees with the quorum"
        logger.warning("state for cycle %d %s; fetching %s from %d peer(s)", cycle, why, digest[:12], len(holders))
        try:
            data = self.fetch(digest, holders, cycle, 4 * self.rt.payload_size + 65536, exact=False)
        except TransferError as err:
            logger.warning("could not fetch the agreed state: %s", err)
            return False
        self.adopt(cycle, data)
        self.log.note += f"fetched agreed state {digest[:12]}; "
        return True

    # -- the cycle --------------------------------------------------------------------------------
    def run(self) -> None:
        self.resume()
        while not self.stop.is_set():
            pos = self.clock.where(self.now())
            if pos.cycle < 0:
                logger.info("waiting %.0fs for genesis", self.clock.genesis - self.now())
                self.wait_until(self.clock.genesis)
                continue
            cycle = pos.cycle
            if not self.sync_to(cycle):
                if pos.phase in ("sync", "train") and self.cycle < cycle:
                    self.stop.wait(1.0)  # the agreed hash may not be readable yet
                    continue
                logger.info("not in sync for cycle %d; waiting for the next cycle", cycle)
                self.wait_until(self.clock.cycle_start(cycle + 1))
                continue
            self.run_cycle(cycle, joined_in=pos.phase)

    def run_cycle(self, cycle: int, joined_in: str) -> None:
        stats_before = (self.net.stats.bytes_in, self.net.stats.bytes_out)
        self.log = CycleLog(cycle, self.role, self.me, self.adversary)
        self.my_payload, self.my_seed = None, b""
        fresh = joined_in in ("sync", "train")
        self.announce_phase(cycle, joined_in)
        if self.role == "validator" and cycle == 0:
            self.log.start_target_loss, self.log.start_general_loss = self.measure()
        self.put(cycle, "peers", records.PeerRecord(role=self.role, version=VERSION, maddrs=self.net.maddrs[:16]))
        if self.role == "miner" and fresh:
            self.mine(cycle)
        if self.role == "validator":
            self.my_seed = secrets.token_bytes(32)
        commits_ok = fresh  # joining after the train phase: too late to commit a seed or a payload
        committed = {}
        if self.enter(cycle, "commit") and commits_ok:
            self.commit(cycle)
            if self.role == "validator":
                committed = self.watch_commits(cycle)
        if self.enter(cycle, "reveal"):
            self.reveal(cycle)
        if self.enter(cycle, "evaluate") and self.role == "validator" and committed:
            self.validate(cycle, committed)
        if self.enter(cycle, "reduce") or self.cycle == cycle:
            self.reduce_cycle(cycle)
        self.log.bytes_in = self.net.stats.bytes_in - stats_before[0]
        self.log.bytes_out = self.net.stats.bytes_out - stats_before[1]
        self.finish(cycle)
        self.wait_until(self.clock.cycle_start(cycle + 1))

    def mine(self, cycle: int) -> None:
        from swarm.miner import train_submission
        from teft.train import Interrupted

        if not self.enter(cycle, "train"):
            return
        if self.adversary == "copycat":  # commits to nothing real; in reveal it claims someone else's payload
            self.my_payload = (secrets.token_hex(32), b"")
            return
        if self.adversary == "replay" and self.old_payloads:  # resubmit the payload of an earlier cycle
            digest = self.old_payloads[0]
            data = self.store.load_payload(digest)
            if data is not None:
                self.my_payload = (digest, data)
                return
        adversary = "free-rider" if self.adversary == "replay" else self.adversary  # replay's first payload
        try:
            sub = train_submission(self.rt, self.state, self.me, cycle, self.stop.is_set, adversary)
        except Interrupted:
            return
        if self.now() >= self.clock.phase_end(cycle, "commit"):
            logger.warning("training overran the commit phase of cycle %d; no submission", cycle)
            return
        digest = self.store.save_payload(sub.payload)
        self.my_payload = (digest, sub.payload)
        self.old_payloads.append(digest)
        self.log.submitted, self.log.train_loss = digest, [sub.first_loss, sub.last_loss]

    def commit(self, cycle: int) -> None:
        if self.role == "miner" and self.my_payload:
            if self.adversary == "late":
                return  # commits in the reveal phase instead, see reveal()
            digest, _ = self.my_payload
            self.put(cycle, "commit", records.CommitRecord(
                digest=records.commit_digest(self.run_id, cycle, self.me, digest)))
        if self.role == "validator":
            self.put(cycle, "seed-commit", records.SeedCommitRecord(
                digest=records.seed_digest(self.my_seed, cycle, self.me)))

    def watch_commits(self, cycle: int) -> dict:
        """Commits first seen before the deadline (reveal start plus up to a second of grace).

        A validator polls through the commit phase and keeps the first record it saw from each peer; a
        commit that first appears later is never evaluated, whatever its author claims about its timing.
        """
        start, end = self.phase_window(cycle, "reveal")
        deadline = start + min(1.0, (end - start) / 4)
        seen: dict[str, dict] = {"commit": {}, "seed-commit": {}}
        while not self.stop.is_set() and self.now() < deadline:
            for kind, found in seen.items():
                for pid, record in self.get(cycle, kind).items():
                    found.setdefault(pid, record)
            left = deadline - self.now()
            if left <= 0.1:
                break
            self.stop.wait(min(1.0, left - 0.1))
        return seen

    def reveal(self, cycle: int) -> None:
        if self.role == "validator" and self.my_seed:
            self.put(cycle, "reveal", records.SeedReveal(seed=self.my_seed.hex()))
        if self.role != "miner" or not self.my_payload:
            return
        digest, data = self.my_payload
        if self.adversary == "late":  # commit halfway through the reveal phase, long after the deadline
            start, end = self.phase_window(cycle, "reveal")
            self.wait_until(start + (end - start) / 2)
            self.put(cycle, "commit", records.CommitRecord(
                digest=records.commit_digest(self.run_id, cycle, self.me, digest)))
        if self.adversary == "copycat":  # claim another miner's revealed payload as our own
            start, end = self.phase_window(cycle, "reveal")
            self.wait_until(start + (end - start) / 2)
            others = {pid: rec for pid, (_, rec) in self.get(cycle, "reveal").items()
                      if pid != self.me and hasattr(rec, "payload_hash")}
            if not others:
                return
            digest, data = others[sorted(others)[0]].payload_hash, b""
        self.put(cycle, "reveal", records.RevealRecord(payload_hash=digest, size=len(data) or self.rt.payload_size))

    def validate(self, cycle: int, committed: dict) -> None:
        from swarm.validator import Verdict, combined_seed, evaluate, to_entries, validation_batches
        from teft.pol import state_loss

        reveals = self.get(cycle, "reveal")
        seeds = {}
        for pid, (_, rec) in committed["seed-commit"].items():
            got = reveals.get(pid)
            if got and hasattr(got[1], "seed"):
                seed = bytes.fromhex(got[1].seed)
                if records.seed_digest(seed, cycle, pid) == rec.digest:
                    seeds[pid] = got[1].seed
        seed = combined_seed(seeds)
        batches = validation_batches(self.rt, seed)
        base_loss = state_loss(self.rt.model, self.rt.layout, self.state, batches)
        self.log.base_loss = base_loss
        verdicts = []
        deadline = self.clock.phase_end(cycle, "evaluate") - 1.0
        for pid, (_, rec) in sorted(committed["commit"].items()):
            got = reveals.get(pid)
            if not got or not hasattr(got[1], "payload_hash"):
                self.log.rejected[pid] = "committed but did not reveal"
                continue
            digest = got[1].payload_hash
            if records.commit_digest(self.run_id, cycle, pid, digest) != rec.digest:
                self.log.rejected[pid] = "reveal does not match its commit"
                continue
            if digest in self.progress.seen_payloads and self.progress.seen_payloads[digest] < cycle:
                self.log.rejected[pid] = f"replayed payload from cycle {self.progress.seen_payloads[digest]}"
                verdicts.append(Verdict(pid, digest, float("inf"), 0.0, self.log.rejected[pid]))
                continue
            data, error = None, None
            if self.now() < deadline:
                try:
                    data = self.fetch(digest, [pid], cycle, self.rt.payload_size, exact=True)
                    self.store.save_payload(data)
                except TransferError as err:
                    error = str(err)
            else:
                error = "no time left in the evaluate phase"
            self.progress.seen_payloads.setdefault(digest, cycle)
            verdict = evaluate(self.rt, self.state, base_loss, pid, digest, data, batches, error)
            if verdict.reason:
                self.log.rejected[pid] = verdict.reason
                logger.warning("cycle %d: %s scores 0: %s", cycle, pid[:12], verdict.reason)
            verdicts.append(verdict)
            self.log.scores[pid] = verdict.score
        entries = to_entries(verdicts)
        if self.adversary == "liar":  # invert the ranking: the worst get the best scores
            top = max((e.score for e in entries), default=0.0) + 1.0
            entries = [Entry(e.miner, e.payload_hash, e.loss, top - e.score) for e in entries]
        self.put(cycle, "ranking", records.RankingRecord(
            entries=[(e.miner, e.payload_hash, float(e.loss), float(e.score)) for e in entries]))
        seen = self.progress.seen_payloads
        for digest in [d for d, c in seen.items() if c < cycle - 10]:
            del seen[digest]

    def reduce_cycle(self, cycle: int) -> None:
        decision = decide(dict(self.get(cycle, "ranking").values()), self.manifest)
        self.log.quorum_met = decision.quorum_met
        self.log.rankings = {peer_key_of(v): s for v, s in decision.scores.items()}
        for (miner, _), median in decision.medians.items():
            self.log.medians[miner] = max(median, self.log.medians.get(miner, 0.0))
        validators = [peer_key_of(v) for v in decision.validators]
        submissions = []
        for miner, digest, _ in decision.merged:
            # validators already hold it: ask them first so the miner uploads as little as possible,
            # each peer in its own order so the load spreads over the validators
            order = sorted(validators, key=lambda v: hashlib.sha256(f"{self.me}/{v}/{digest}".encode()).digest())
            try:
                data = self.fetch(digest, [*order, miner], cycle, self.rt.payload_size, exact=True)
                submissions.append(from_bytes(data))
            except TransferError as err:
                logger.warning("cycle %d: cannot fetch merged payload %s: %s; will fetch the agreed state",
                               cycle, digest[:12], err)
                self.log.note += "missing a merged payload; "
                return
        self.log.merged = [m for m, _, _ in decision.merged]
        new_state, new_momentum = reduce(self.state, self.momentum, submissions, self.rt.outer)
        data = bundle(new_state, new_momentum)
        self.adopt(cycle + 1, data)
        self.log.state_hash = state_hash(data)
        self.put(cycle, "state", records.StateRecord(state_hash=self.log.state_hash))
        if self.role == "validator":
            self.log.target_loss, self.log.general_loss = self.measure()

    def measure(self) -> tuple[float, float | None]:
        """Target and general validation loss of the held state on fixed blocks (for reports)."""
        from swarm.runtime import report_batches
        from teft.pol import state_loss

        rt = self.rt
        target = state_loss(rt.model, rt.layout, self.state, report_batches(rt.validation_blocks))
        general = None
        if rt.general_blocks is not None:
            general = state_loss(rt.model, rt.layout, self.state, report_batches(rt.general_blocks))
        return target, general

    def finish(self, cycle: int) -> None:
        agreed, _ = self.agreed_hash(cycle)
        self.log.agreed_hash = agreed or ""
        with open(self.store.root / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(self.log.__dict__, default=str) + "\n")
        lo = self.log
        logger.info("cycle %d summary: role %s%s, submitted %s, scores %s, merged %d (%s), state %s, "
                    "bytes in %d out %d%s", cycle, self.role, f" ({self.adversary})" if self.adversary else "",
                    (lo.submitted or "-")[:12], {k[:8]: round(v, 4) for k, v in lo.scores.items()},
                    len(lo.merged), ",".join(m[:8] for m in lo.merged), lo.state_hash[:12],
                    lo.bytes_in, lo.bytes_out, f", {lo.note}" if lo.note else "")


class Network:
    """The peer's P2P side: a payload server over the DHT's libp2p daemon, and fetches from others."""

    def __init__(self, dht, run_id: str, store: Store, timeout: float):
        from swarm.dhtnode import visible_maddrs
        from swarm.transfer import BackgroundLoop, PayloadServer

        self.run_id, self.timeout = run_id, timeout
        self.stats = TransferStats()
        self.loop = BackgroundLoop()
        self.p2p = self.loop.run(dht.replicate_p2p(), timeout=30)
        self.server = self.loop.run(PayloadServer(self.p2p, store.find, run_id, self.stats).start(), timeout=30)
        self.maddrs = visible_maddrs(dht)

    def fetch_any(self, peers: list[str], digest: str, size: int, maddrs: dict, exact: bool) -> bytes:
        from swarm.transfer import fetch_any

        return self.loop.run(fetch_any(self.p2p, peers, digest, size, self.timeout, run_id=self.run_id,
                                       stats=self.stats, maddrs=maddrs, exact=exact),
                             timeout=self.timeout * max(len(peers), 1) + 5)

    def close(self) -> None:
        for step in (self.server.stop, self.p2p.shutdown):
            try:
                self.loop.run(step(), timeout=5)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
        self.loop.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m swarm.peer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", required=True, choices=ROLES, help="miner: trains and submits; validator: scores "
                   "submissions by Proof-of-Loss and publishes signed rankings")
    p.add_argument("--config", required=True, help="run manifest YAML (the same file on every peer)")
    p.add_argument("--initial-peers", "--initial_peers", nargs="*", default=[],
                   help="multiaddrs of peers to join through (the JOIN lines printed by python -m bootstrap)")
    p.add_argument("--identity", required=True,
                   help="key file of this peer; created if missing (its directory must exist)")
    p.add_argument("--workdir", required=True, help="directory for checkpoints, payloads and progress (resumable)")
    p.add_argument("--host-maddrs", "--host_maddrs", nargs="+", default=["/ip4/127.0.0.1/tcp/0"],
                   help="addresses to listen on (default /ip4/127.0.0.1/tcp/0; use 0.0.0.0 to accept others)")
    p.add_argument("--announce-maddrs", "--announce_maddrs", nargs="*", default=None,
                   help="public addresses to advertise, when they differ from the listening ones (NAT)")
    p.add_argument("--data", default=None, help="train on this data instead of the manifest's data.train")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's choice; use 1 when many peers share a machine)")
    p.add_argument("--fetch-timeout", "--fetch_timeout", type=float, default=30.0,
                   help="seconds to wait for one payload from one peer (default 30)")
    p.add_argument("--startup-timeout", "--startup_timeout", type=float, default=30.0,
                   help="seconds to reach the initial peers before giving up (default 30)")
    p.add_argument("--log-level", "--log_level", default="INFO", help="logging level (default INFO)")
    p.add_argument("--adversary", default=None, help=argparse.SUPPRESS)  # simulation only: misbehave on purpose
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [{args.role}] %(message)s")
    for noisy in ("hivemind", "transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
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
        from swarm.dhtnode import start_dht
        from swarm.manifest import load, run_id
        from swarm.runtime import describe, load_runtime

        manifest = load(args.config)
        rid = run_id(manifest)
        identity_path = Path(args.identity)
        if not identity_path.parent.exists():
            raise SwarmError(f"the directory of --identity {identity_path} does not exist: create it first")
        identity = load_or_create(identity_path)
        store = Store(args.workdir)
        started = time.monotonic()  # join first: an unreachable bootstrap should fail before the model loads
        dht = start_dht(identity, args.initial_peers, args.host_maddrs, args.announce_maddrs,
                        startup_timeout=args.startup_timeout, run_id=rid)
        net = Network(dht, rid, store, args.fetch_timeout)
        rt = load_runtime(manifest, args.data, args.device)
        logger.info("run %s: %s", rid, describe(rt))
        logger.info("peer %s up in %.2fs at %s", identity.peer_key, time.monotonic() - started, " ".join(net.maddrs))
        Peer(args.role, rt, identity, dht, net, store, stop, args.adversary).run()
    except SwarmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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
