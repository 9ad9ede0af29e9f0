"""A whole swarm in one process: real peers, roles, records and models on an in-memory DHT and network.

The doubles keep the parts that decide outcomes real: records are signed and checked by the same
hivemind validators a DHT node runs (RSASignatureValidator + SchemaCheck), payloads are served from
the peers' real stores with the same size rules as the transfer layer, and every peer runs the real
`Peer.run` loop in its own thread. Only time is virtual: it jumps to the next wake-up once every peer
is waiting, so a cycle of the tiny model takes seconds and its phases never race the machine's load.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from hivemind.dht.routing import DHTID
from hivemind.dht.validation import CompositeValidator, DHTRecord
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.timed_storage import ValueWithExpiration

from swarm.errors import TransferError
from swarm.net.dht import default_validators
from swarm.net.identity import load_or_create
from swarm.net.pieces import pieces_root
from swarm.protocol.cycle import Peer
from swarm.protocol.runtime import load_runtime
from swarm.protocol.store import Store


class VirtualTime:
    """Discrete-event time for peers in threads; reaching `end` sets `stop`."""

    def __init__(self, start: float, end: float, stop: threading.Event):
        self.t, self.end, self.stop = start, end, stop
        self.cond = threading.Condition()
        self.members = 0
        self.waiting: dict[int, float] = {}

    def now(self) -> float:
        return self.t

    def join(self) -> None:
        with self.cond:
            self.members += 1

    def leave(self) -> None:
        with self.cond:
            self.members -= 1
            self._advance()

    def wait_until(self, t: float, stop: threading.Event) -> bool:
        with self.cond:
            me = threading.get_ident()
            while not stop.is_set() and self.t < t:
                self.waiting[me] = t
                self._advance()
                if self.t < t and not stop.is_set():
                    self.cond.wait(1.0)
            self.waiting.pop(me, None)
            return not stop.is_set()

    def _advance(self) -> None:
        if self.members and len(self.waiting) >= self.members:
            self.t = max(self.t, min(self.waiting.values()))
            if self.t >= self.end:
                self.stop.set()
            self.cond.notify_all()


class MemoryDHT:
    """One peer's view of a shared record table, validated like a hivemind node validates."""

    def __init__(self, table: dict, identity, run_id: str, validators=None):
        self.table = table
        self.validator = CompositeValidator(default_validators(identity, run_id) if validators is None else validators)
        self.lock = threading.Lock()

    def store(self, key, value, expiration_time, subkey=None, **_):
        record = DHTRecord(DHTID.generate(source=key).to_bytes(), MSGPackSerializer.dumps(subkey),
                           MSGPackSerializer.dumps(value), expiration_time)
        record = dataclasses.replace(record, value=self.validator.sign_value(record))
        if not self.validator.validate(record):
            return False
        with self.lock:
            slot = self.table.setdefault(key, {})
            old = slot.get(record.subkey)
            if old is not None and old[1] >= expiration_time:
                return False
            slot[record.subkey] = (record.value, expiration_time)
        return True

    def get(self, key, latest=True, return_future=False, **_):
        if return_future:  # as hivemind's: a future of the same answer (here always done)
            import concurrent.futures

            done = concurrent.futures.Future()
            done.set_result(self.get(key, latest))
            return done
        with self.lock:
            slot = dict(self.table.get(key, {}))
        items = {}
        for subkey, (value, expiration) in slot.items():
            record = DHTRecord(DHTID.generate(source=key).to_bytes(), subkey, value, expiration)
            if self.validator.validate(record):
                items[MSGPackSerializer.loads(subkey)] = ValueWithExpiration(
                    MSGPackSerializer.loads(self.validator.strip_value(record)), expiration)
        return ValueWithExpiration(items, max((v.expiration_time for v in items.values()), default=0)) \
            if items else None


@dataclasses.dataclass
class Stats:
    bytes_in: int = 0
    bytes_out: int = 0


class MemoryNetwork:
    """Fetch by hash from other peers' stores, refusing what the transfer layer refuses."""

    LOOKUP_TIMEOUT_S = 5.0  # real seconds a peer's lookup may take before the fetch counts as timed out

    def __init__(self, store: Store, me: str, everyone: dict[str, MemoryNetwork]):
        self.store, self.me, self.everyone = store, me, everyone
        self.lookup = store.find  # what this peer serves by hash (a stalling adversary wraps it)
        self.maddrs = [f"/memory/{me}"]
        self.stats = Stats()
        everyone[me] = self

    def connected(self, timeout: float = 3.0) -> set[str]:
        """Every peer of the process counts as connected; a Sybil's throwaway keys do not (nothing dials for them)."""
        return set(self.everyone)

    def fetch(self, peers, digest, size, maddrs, exact, on_failure=None):
        reasons = []
        for pid in peers:
            other = self.everyone.get(pid)
            try:
                data = other.serve(digest) if other is not None else None
            except TransferError as err:
                reasons.append(str(err))
                continue
            if data is None:
                continue
            if len(data) > size or (exact and len(data) != size):
                raise TransferError(f"peer {pid[:8]} sent {len(data)} bytes, more than the {size} asked for")
            self.stats.bytes_in += len(data)
            other.stats.bytes_out += len(data)
            return data
        raise TransferError(f"no peer of {len(peers)} served {digest[:12]}" + "".join(f"; {r}" for r in reasons))

    def fetch_pieces(self, peers, digest, root, size, maddrs, partial=None, on_failure=None):
        """The whole object from the first holder, refused unless its piece manifest hashes to `root` (the real
        one checks each piece from every holder at once: tests/net/test_pieces.py)."""
        data = self.fetch(peers, digest, size, maddrs, exact=False, on_failure=on_failure)
        if pieces_root(data) != root:
            raise TransferError(f"fetch {digest[:12]}: its pieces do not match the pinned root")
        return data

    def serve(self, digest):
        """This peer's lookup, given LOOKUP_TIMEOUT_S real seconds (the transfer layer's timeout, scaled down)."""
        box = []
        worker = threading.Thread(target=lambda: box.append(self.lookup(digest)), daemon=True)
        worker.start()
        worker.join(self.LOOKUP_TIMEOUT_S)
        if worker.is_alive():
            raise TransferError(f"fetch {digest[:12]} from {self.me[:8]}: timed out")
        return box[0] if box else None

    def connect(self, peers, timeout=5.0):
        """Every peer of this process is reachable: connected, unless it is not in it."""
        return {pid: None if pid in self.everyone else "no such peer" for pid in peers}

    meet = connect  # one process, one table: nothing to ping

    def fetch_stream(self, requests, budget_s, max_parallel=4, timeout=None, on_data=None):
        """The same per-request outcome as the transfer layer's fetch_stream, in request order (time costs
        nothing here)."""
        from swarm.net.fetchmany import FetchResult

        for r in requests:
            try:
                data = self.fetch(list(r.peers), r.payload_hash, r.expected_size, {}, r.exact)
            except TransferError as err:
                yield FetchResult(r, None, str(err))
                continue
            if on_data is not None:
                on_data(data)
            yield FetchResult(r, data)


def heldout_math_blocks(path: Path, rt):
    """A validator's private held-out data, as `swarm.simulate` makes it: fresh math from a secret seed,
    tokenized with the run's own tokenizer and block length."""
    import subprocess
    import sys

    from teft.data import load_texts, tokenize_blocks

    script = Path(__file__).resolve().parents[1] / "scripts" / "build_corpora.py"
    subprocess.run([sys.executable, str(script), "--heldout-math", str(path)], check=True, capture_output=True)
    return tokenize_blocks(rt.tokenizer, load_texts(str(path), "validation"), rt.manifest.data.seq_len)


GENESIS = 1_900_000_000.0
# the inner loop of in-process swarms that train 2-8 steps: the default's batch of 2 is too noisy for so few
# steps to help reliably, and these tests are about the protocol, not the recipe
FEW_STEPS = {"batch_size": 8, "lr": 1.0e-3}
REPO = Path(__file__).resolve().parents[1]


def with_few_steps_checks(overrides: dict | None) -> dict | None:
    """Manifest overrides as these swarms need them: with an inner loop other than tiny.yaml's (FEW_STEPS), the
    validators' assigned-batches and general-drift checks are off. Both are calibrated for tiny.yaml's loop (20
    steps of batch 2 at lr 3e-3: honest updates 3.2-8.1 standard errors over the 2 needed, and drifting at most
    0.064 nats against the 0.08 allowed); 4 steps of FEW_STEPS made honest updates that reached only 1.0-1.9, and
    the general check would cost every judgement 16 more blocks for nothing these tests ask.
    tests/test_validator.py checks both with tiny.yaml's own loop."""
    if not overrides or "inner" not in overrides:
        return overrides
    data = overrides.get("data", {})
    return {**overrides, "data": {"assigned_z": 0.0, "max_general_drift": None, **data}}


class Swarm:
    """Peers of one run in threads; `run(cycles)` drives them all through whole cycles."""

    @classmethod
    def tiny(cls, root: Path, validators: list[str], overrides: dict | None = None) -> Swarm:
        """A run of the embedded default (configs/tiny.yaml) allowlisting these validators, keys made in root."""
        from swarm.launch import write_manifest
        from swarm.protocol.manifest import load

        keys = [load_or_create(root / f"{v}.key").public_key_str for v in validators]
        overrides = with_few_steps_checks(overrides)
        path = write_manifest(REPO / "configs" / "tiny.yaml", root / "run" / "run.yaml", keys, GENESIS, overrides)
        return cls(load(path), root)

    def rows(self, name: str, cycles: int) -> dict[int, dict]:
        """A peer's metrics.jsonl lines of the cycles the run finished (it stops early in the next one)."""
        import json

        path = self.peers[name].store.root / "metrics.jsonl"
        rows = {row["cycle"]: row for row in map(json.loads, path.read_text().splitlines())}
        return {c: rows[c] for c in range(cycles) if c in rows}

    def __init__(self, manifest, root: Path):
        self.manifest, self.root = manifest, root
        self.stop = threading.Event()
        self.table: dict = {}
        self.nets: dict[str, MemoryNetwork] = {}
        self.peers: dict[str, Peer] = {}
        self.runtimes: list = []
        self._private = None
        self.time: VirtualTime | None = None

    def add(self, name: str, make_role, identity=None, dht_validators=None, background: str = "bf16") -> Peer:
        """A peer of this run; validators get private held-out data when the manifest asks for it; a miner with
        a low-bit `background` holds a light model (teft.light), loaded as swarm.peer loads it."""
        from swarm.protocol.manifest import run_id

        identity = identity or load_or_create(self.root / f"{name}.key")
        store = Store(self.root / name)
        rt = self.runtime()
        if background != "bf16":
            from teft.light import load_light_model

            rt.model, _, rt.layout = load_light_model(self.manifest.base_model.path, rt.expert_map, background)
        if getattr(make_role, "kind", None) == "validator" and self.manifest.data.private_validation:
            rt.private_blocks = self.private_data()
        net = MemoryNetwork(store, identity.peer_key, self.nets)
        if dht_validators is None and hasattr(make_role, "record_validators"):  # the role's hook, as swarm.peer
            dht_validators = make_role.record_validators(identity, run_id(self.manifest), None)  # virtual time
        dht = MemoryDHT(self.table, identity, run_id(self.manifest), dht_validators)
        self.peers[name] = Peer(make_role, rt, identity, dht, net, store, self.stop)
        return self.peers[name]

    def private_data(self):
        """One held-out set for this run's validators, made once (fresh math from a secret seed)."""
        if self._private is None:
            self._private = heldout_math_blocks(self.root / "heldout.jsonl.gz", self.runtimes[0])
        return self._private

    def runtime(self):
        """One model per peer (training mutates it); loaded once and copied, the tiny model is small."""
        import copy

        if not self.runtimes:
            self.runtimes.append(load_runtime(self.manifest))
        rt = copy.copy(self.runtimes[0])
        rt.model = copy.deepcopy(self.runtimes[0].model)
        return rt

    def run(self, cycles: int, timeout: float = 600, start_cycle: int = 0) -> None:
        """Every peer from `start_cycle` (joining then, as if started late) until cycle `cycles` begins."""
        clock = self.manifest.clock()
        start = clock.genesis - 1.0 if start_cycle == 0 else clock.cycle_start(start_cycle)
        self.time = VirtualTime(start, clock.cycle_start(cycles) + 0.5, self.stop)
        errors: list[BaseException] = []

        def body(peer: Peer) -> None:
            try:
                peer.run()
            except BaseException as err:  # noqa: BLE001 - reported by the test
                errors.append(err)
                self.stop.set()
            finally:
                self.time.leave()

        threads = []
        for peer in self.peers.values():
            peer.time = self.time
            self.time.join()
            threads.append(threading.Thread(target=body, args=(peer,), daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
        self.stop.set()
        if any(t.is_alive() for t in threads):
            raise TimeoutError("a peer thread did not finish")
        if errors:
            raise errors[0]
