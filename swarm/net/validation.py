"""What every honest DHT node accepts and keeps: well-formed swarm records of this run, one per owner per key
(its one canonical key encoding), for a few cycles around now, validator kinds from the allowlist only, and
no more records per key or bytes in all than a fixed cap.

hivemind hands validators only the *hash* of the key, so every value carries its own envelope {"kind",
"run", "cycle", ...}; SchemaCheck recomputes the key hash from it and refuses the record unless it matches
the key it was stored under. The owner-marker rule here is the same one get_records applies on read.

Three pieces, in the order hivemind applies them to a record (validators by decreasing priority):
- OwnerKeyCheck (priority 20): the subkey is one canonical owner marker and the value is small, before
  RSASignatureValidator (10) spends an RSA verification on it: a key with a huge public exponent, or one
  of the many encodings of a real key, is refused unverified.
- SchemaCheck (0): the envelope, the key, the cycle window, the expiry cap and the allowlist.
- BoundedStorage: what a validator cannot see, the node's own storage: at most MAX_SUBKEYS_PER_KEY
  records under one key and MAX_STORED_BYTES in all (allowlisted validators are never refused).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from hivemind.dht.routing import DHTID
from hivemind.dht.storage import DHTLocalStorage, DictionaryDHTValue
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.timed_storage import TimedStorage, ValueWithExpiration, get_dht_time

from swarm.errors import SwarmError
from swarm.net.identity import MAX_SUBKEY_BYTES, owner_subkey, peer_key_of, public_key_from_subkey
from swarm.net.records import MAX_VALUE_BYTES, check_value, commit_digest, record_key
from swarm.net.work import meets

logger = logging.getLogger("swarm.net.records")

MAX_AGE_CYCLES = 4  # records for cycles older than current - 4 are refused (nothing reads that far back)
MAX_LIFETIME_CYCLES = 4.25  # a record expires at most this many cycle lengths from now (peers use cycle + 3)
VALIDATOR_KINDS = frozenset({"seed-commit", "seed-reveal", "ranking"})  # only allowlisted owners write these
MINER_KINDS = frozenset({"commit", "reveal"})  # only listed miners, when the manifest lists miners
MAX_SIGNED_VALUE_BYTES = MAX_VALUE_BYTES + 1024  # the value plus hivemind's `[signature:...]` (512 B at most)
MAX_SUBKEYS_PER_KEY = 1024  # records one node keeps under one key: filling a commit key first costs 1024 proofs
#                            of work a cycle; a full key of the largest records (peers) still reads in one message
MAX_STORED_BYTES = 32 << 20  # what one node keeps in all, counted as below
ENTRY_OVERHEAD = 256  # counted per record on top of its subkey and value bytes: Python's own objects
RECOUNT_INTERVAL_S = 1.0  # a full node stops counting expired records again more often than this
_OWNER_MARK = b"[owner:"


@dataclass(frozen=True)
class CycleHorizon:
    """The run's bounds on time and owners that every honest DHT node enforces (SchemaCheck).

    A record may be for the cycles current - MAX_AGE_CYCLES .. current + 1 (a clock a little ahead), and
    expire at most MAX_LIFETIME_CYCLES cycle lengths from now: stored earlier, later or for longer it is
    refused. With `validators` given, the validator kinds (VALIDATOR_KINDS) are accepted from those keys
    only; with `miners` given too, commits and reveals from those keys only. A plain dataclass of plain
    values, so the DHT child process can take it along (it is pickled).
    """

    genesis: float
    cycle_length: float
    validators: frozenset[str] = field(default_factory=frozenset)  # canonical keys; empty: not enforced
    miners: frozenset[str] | None = None  # None: anyone may commit
    work_bits: int = 0  # the proof of work a commit must carry to be stored (swarm/net/work.py)

    def __call__(self) -> int:
        """The latest cycle a record may be for right now: the current one plus one."""
        return self.current() + 1

    def current(self, now: float | None = None) -> int:
        """The cycle running at DHT time `now`."""
        now = get_dht_time() if now is None else now
        return math.floor((now - self.genesis) / self.cycle_length)

    def admitting(self, validators: Any, miners: Any = None) -> CycleHorizon:
        """This horizon with the manifest's allowlists (keys in any text form a manifest holds)."""
        return replace(self, validators=frozenset(validators),
                       miners=None if miners is None else frozenset(miners))

    def refuses(self, kind: str, cycle: int, owner: str, expiration: float) -> str | None:
        """Why a record of `owner` for `cycle`, expiring at `expiration`, may not be stored now; None if it may."""
        now = get_dht_time()
        current = self.current(now)
        if cycle > current + 1:
            return f"for cycle {cycle}, ahead of the clock (cycle {current})"
        if cycle < current - MAX_AGE_CYCLES:
            return f"for cycle {cycle}, more than {MAX_AGE_CYCLES} cycles old"
        if expiration > now + MAX_LIFETIME_CYCLES * self.cycle_length:
            return f"expiring {expiration - now:.0f}s from now, over {MAX_LIFETIME_CYCLES:g} cycle lengths"
        if self.validators and kind in VALIDATOR_KINDS and owner not in self.validators:
            return "from a key that is not an allowlisted validator"
        if self.miners is not None and kind in MINER_KINDS and owner not in self.miners:
            return "from a key that is not a listed miner"
        return None


def run_horizon(manifest: Any) -> CycleHorizon:
    """The bounds every DHT node of this manifest's run enforces: its clock and its allowlists."""
    return replace(manifest.horizon().admitting(manifest.validators, manifest.miners),
                   work_bits=manifest.commit_work_bits)


class OwnerKeyCheck(RecordValidatorBase):
    """Refuses, before any signature is verified, a record whose subkey names an owner in any but the one
    canonical form, and a value too big to be a swarm record.

    hivemind applies validators by decreasing priority, so at 20 this runs before RSASignatureValidator
    (10): a key with a huge public exponent or a padded encoding never costs an RSA verification.
    It neither signs nor strips (hivemind's defaults return the value unchanged). A record with no owner
    marker at all is left to the other validators (SchemaCheck refuses it as a swarm record).
    """

    def validate(self, record: DHTRecord) -> bool:
        """Called by hivemind for every record stored on or fetched by this peer, first."""
        if len(record.value) > MAX_SIGNED_VALUE_BYTES or _OWNER_MARK in record.key:
            return False
        if record.subkey is None or _OWNER_MARK not in record.subkey:
            return True
        return owner_of_serialized_subkey(record.subkey) is not None

    @property
    def priority(self) -> int:
        """Above RSASignatureValidator's 10: validated first."""
        return 20


class SchemaCheck(RecordValidatorBase):
    """Rejects records that are not well-formed, owner-signed swarm records of this run, in its window.

    strict=True (the default) rejects any other record too: the swarm's DHT carries nothing
    else, and an unrecognisable value is exactly what a forger would store.
    """

    def __init__(self, run_id: str | None = None, strict: bool = True, horizon: CycleHorizon | None = None):
        self.run_id = run_id
        self.strict = strict
        self.horizon = horizon

    def validate(self, record: DHTRecord) -> bool:
        """Called by hivemind for every record stored on or fetched by this peer."""
        if len(record.value) > MAX_VALUE_BYTES:
            logger.debug("refusing a %d-byte record", len(record.value))
            return False
        try:
            value = MSGPackSerializer.loads(record.value)
        except Exception:  # noqa: BLE001 - any decoding failure means a malformed record
            return not self.strict
        if not (isinstance(value, dict) and "kind" in value):
            return not self.strict
        try:
            kind, run, cycle, parsed = check_value(value, self.run_id)
        except ValueError as e:
            logger.debug("refusing a record: %s", e)
            return False
        owner = owner_of_serialized_subkey(record.subkey)
        if owner is None:
            logger.debug("refusing a %s record whose subkey is not exactly one canonical owner marker", kind)
            return False
        if self.horizon is not None:
            why = self.horizon.refuses(kind, cycle, owner, record.expiration_time)
            if why is not None:
                logger.debug("refusing a %s record %s", kind, why)
                return False
        if DHTID.generate(source=record_key(run, cycle, kind)).to_bytes() != record.key:
            logger.debug("refusing a %s record stored under a key other than its own", kind)
            return False
        if self.horizon is not None and self.horizon.work_bits and kind in ("commit", "reveal") \
                and not self._worked(kind, run, cycle, parsed, owner):
            logger.debug("refusing a %s without the run's proof of work", kind)
            return False
        return True

    def _worked(self, kind: str, run: str, cycle: int, parsed, owner: str) -> bool:
        """Whether a commit, or a reveal (through the commit digest it opens), carries the run's proof of work:
        a key of either kind can then be filled first only at that price per record."""
        if kind == "commit":
            digest = parsed.digest
        else:
            try:
                digest = commit_digest(run, cycle, peer_key_of(owner), parsed.payload_hash)
            except SwarmError:
                return False
        return meets(digest, parsed.nonce, self.horizon.work_bits)

    @property
    def priority(self) -> int:
        """Below RSASignatureValidator's 10, so it sees the value with the signature stripped."""
        return 0


@functools.lru_cache(maxsize=4096)  # every read checks every record again; the real owners stay cached
def owner_of_serialized_subkey(subkey: bytes | None) -> str | None:
    """The owner key of a subkey as it travels (msgpack bytes), under the one rule both sides apply.

    The subkey must decode to exactly `[owner:<canonical key>]` and re-encode to the very same bytes:
    anything else (a suffix that gives one owner unlimited subkeys, another encoding of the same key, a
    non-canonical msgpack encoding that makes hivemind drop the key's whole value) is refused before it
    is stored.
    """
    if not subkey or len(subkey) > MAX_SUBKEY_BYTES + 8:  # + msgpack's header
        return None
    try:
        decoded = MSGPackSerializer.loads(subkey)
    except Exception:  # noqa: BLE001 - any decoding failure means a malformed subkey
        return None
    if MSGPackSerializer.dumps(decoded) != subkey:
        return None
    return public_key_from_subkey(decoded)


def _record_bytes(subkey: Any, value: Any) -> int:
    """What one record is counted as: its subkey and value bytes plus a fixed overhead."""
    sub = len(subkey) if isinstance(subkey, bytes) else len(MSGPackSerializer.dumps(subkey))
    return sub + (len(value) if isinstance(value, bytes) else 0) + ENTRY_OVERHEAD


class BoundedStorage(DHTLocalStorage):
    """A DHT node's local storage with a cap per key and a cap in all, which no record validator can give.

    - Under one key at most `max_subkeys` records: when full, a record of a new owner is refused (an owner
      already held may still replace its own); allowlisted validators' records are never refused.
    - In all at most `max_bytes` (records counted by _record_bytes); again the allowlist is exempt.
    - `get` hands out a copy of a key's records: hivemind merges what other nodes answer a read with into
      the first value it found, which would otherwise be this storage's own, past every cap.

    hivemind 1.1.12 builds its DHTLocalStorage inside DHTProtocol.create with no parameter for another
    class, so swarm.net.dht.start_dht installs this one through DHT.run_coroutine once the node is up
    (install_bounded_storage): records already held are carried over through the caps, and the node's
    separate read cache becomes this same object. A separate cache would be uncapped, and since a node
    answers a read with whichever of its storage or cache value expires later, a record pushed into the
    cache with in_cache=True would hide every record the node stores under that key.
    """

    def __init__(self, max_subkeys: int = MAX_SUBKEYS_PER_KEY, max_bytes: int = MAX_STORED_BYTES,
                 allowlist: frozenset[str] | tuple[str, ...] = ()):
        super().__init__()
        self.max_subkeys, self.max_bytes = max_subkeys, max_bytes
        self.privileged = frozenset(owner_subkey(key) for key in allowlist)
        self.counted = 0  # bytes stored since the last recount (expired and replaced records counted too)
        self._recounted_at = -math.inf

    def store(self, key: DHTID, value: Any, expiration_time: float, subkey: Any = None) -> bool:
        """A record under a subkey, a whole read result (a dictionary: record by record), or a plain value."""
        if subkey is not None:
            return self.store_subkey(key, subkey, value, expiration_time)
        if isinstance(value, DictionaryDHTValue):  # hivemind caching what a read found
            return any([self.store_subkey(key, sk, item.value, item.expiration_time)
                        for sk, item in list(value.items())])
        if not self._room(len(value) + ENTRY_OVERHEAD):
            return False
        stored = super().store(key, value, expiration_time)
        if stored:
            self.counted += len(value) + ENTRY_OVERHEAD
        return stored

    def store_subkey(self, key: DHTID, subkey: Any, value: Any, expiration_time: float) -> bool:
        """DHTLocalStorage.store_subkey under the caps (its own logic, on this storage's real value)."""
        previous, previous_expiration = TimedStorage.get(self, key) or (b"", -math.inf)
        privileged = subkey in self.privileged
        if isinstance(previous, DictionaryDHTValue):
            held = previous.get(subkey)
            if held is not None and held.expiration_time >= expiration_time:
                return False
            if held is None and len(previous) >= self.max_subkeys and not privileged:
                logger.debug("refusing a record under a key that holds %d already", len(previous))
                return False
        size = _record_bytes(subkey, value)
        if not privileged and not self._room(size):
            logger.debug("refusing a record: this node holds %d bytes of records", self.counted)
            return False
        if isinstance(previous, DictionaryDHTValue):
            if expiration_time > previous.latest_expiration_time:
                TimedStorage.store(self, key, previous, expiration_time)  # the key lives as long as its latest
            stored = previous.store(subkey, value, expiration_time)
        elif expiration_time > previous_expiration:  # nothing yet, or a plain value that expires sooner
            records = DictionaryDHTValue()
            records.store(subkey, value, expiration_time)
            stored = TimedStorage.store(self, key, records, records.latest_expiration_time)
        else:
            stored = False
        if stored:
            self.counted += size
        return stored

    def get(self, key: DHTID) -> ValueWithExpiration | None:
        """What is held under `key`; a key's records as a copy, so whoever merges into it merges elsewhere."""
        found = TimedStorage.get(self, key)
        if found is None or not isinstance(found.value, DictionaryDHTValue):
            return found
        copy = DictionaryDHTValue()
        for subkey, item in found.value.items():
            copy.store(subkey, item.value, item.expiration_time)
        return ValueWithExpiration(copy, found.expiration_time)

    def _room(self, size: int) -> bool:
        """Whether `size` more bytes fit; when they seem not to, count what is really held (not too often)."""
        if self.counted + size <= self.max_bytes:
            return True
        now = time.monotonic()
        if now - self._recounted_at >= RECOUNT_INTERVAL_S:
            self._recounted_at = now
            self.counted = self.held_bytes()
        return self.counted + size <= self.max_bytes

    def held_bytes(self) -> int:
        """The counted size of every unexpired record held now."""
        total = 0
        for _, item in list(self.items()):
            if isinstance(item.value, DictionaryDHTValue):
                total += sum(_record_bytes(sk, sub.value) for sk, sub in list(item.value.items()))
            else:
                total += _record_bytes(b"", item.value)
        return total


async def install_bounded_storage(storage: BoundedStorage, _dht: Any, node: Any) -> int:
    """In the DHT process (through DHT.run_coroutine): make `storage` the node's storage and its cache,
    carrying over what either holds; how many keys it holds after."""
    protocol = node.protocol
    for old in {id(s): s for s in (protocol.storage, protocol.cache)}.values():
        if old is storage:
            continue
        for key, item in list(old.items()):
            storage.store(key, item.value, item.expiration_time)
    protocol.storage = protocol.cache = storage
    return len(storage)
