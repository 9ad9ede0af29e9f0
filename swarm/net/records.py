"""DHT keys and signed record schemas, checked on write (by every validating peer) and on read.

How values are checked: hivemind hands validators only the *hash* of the key, so a validator
cannot tell from the key alone which schema applies. Every value therefore carries its own
envelope {"kind", "run", "cycle", ...fields}; SchemaCheck (swarm/net/validation.py) recomputes the
key hash from the envelope and rejects the record unless it matches the hashed key it was stored under,
the fields parse for that kind, the value is at most 4 KB, and the subkey is exactly one canonical owner
marker: `[owner:<key>]` with the key in its one canonical OpenSSH encoding, e=65537, 2048-4096 bits
(swarm.net.keys; checked before any signature is, by validation.OwnerKeyCheck), so RSASignatureValidator
has verified the owner's signature and an owner has one record per key. A record cannot be replayed under
another run, cycle or kind; validation.py also bounds its cycle, its expiry, who may write validator kinds
and how much one node keeps. get_records checks every value again on read, because a peer that runs
without SchemaCheck may still answer queries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from hivemind.utils.serializer import MSGPackSerializer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from swarm.errors import RecordError, SwarmError
from swarm.net.identity import Identity, peer_key_of, public_key_from_subkey

logger = logging.getLogger(__name__)

MAX_VALUE_BYTES = 4096  # hivemind hangs on values near 15 KB; records hold hashes, never payloads
ENVELOPE = ("kind", "run", "cycle")
MAX_RANKED = 24  # entries in one ranking: about 130 bytes each, so a full ranking stays under the value cap

Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ShortStr = Annotated[str, Field(min_length=1, max_length=64)]


class _Record(BaseModel):
    """Shared config: unknown fields are an error, floats must be finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PeerRecord(_Record):
    """A live peer announcing its role and where to reach it."""

    role: ShortStr
    version: ShortStr
    # small, so that a key full of them (swarm/net/validation.MAX_SUBKEYS_PER_KEY) still reads in one message
    maddrs: list[Annotated[str, Field(max_length=160)]] = Field(default_factory=list, max_length=8)  # announceable()


MAX_MADDRS, MAX_MADDR_CHARS = 8, 160


def announceable(maddrs: list[str]) -> list[str]:
    """The addresses a peers record can carry: at most MAX_MADDRS, each at most MAX_MADDR_CHARS long."""
    return [m for m in maddrs if len(m) <= MAX_MADDR_CHARS][:MAX_MADDRS]


class CommitRecord(_Record):
    """A miner's binding commitment: commit_digest(run, cycle, miner, payload_hash), and the proof of work on it
    (swarm/net/work.py) the run asks for."""

    digest: Hex64
    nonce: int = Field(default=0, ge=0, lt=1 << 64)


class SeedCommitRecord(_Record):
    """A validator's commitment to its evaluation seed: seed_digest(seed, cycle, validator)."""

    digest: Hex64


class RevealRecord(_Record):
    """A miner reveals the payload its commit bound it to."""

    payload_hash: Hex64
    size: int = Field(ge=0)
    nonce: int = Field(default=0, ge=0, lt=1 << 64)  # the commit's proof of work again: honest nodes store a
    #                                                 reveal only when it proves the commit it claims to open
    pieces: Hex64 | None = None  # the payload's pieces root (swarm/net/pieces.py): a payload of more than one
    #                              piece is fetched in pieces from every peer that holds it; a wrong root only
    #                              keeps the miner's own payload from arriving


class SeedReveal(_Record):
    """A validator reveals the seed it committed to."""

    seed: Hex64


class RankingRecord(_Record):
    """A validator's scores: entries of (miner peer key, payload hash, loss, score)."""

    entries: list[tuple[ShortStr, Hex64, float, float]] = Field(max_length=MAX_RANKED)

    @field_validator("entries")
    @classmethod
    def _finite(cls, entries: list[tuple[str, str, float, float]]) -> list[tuple[str, str, float, float]]:
        """Scores feed a median; NaN or inf would poison it."""
        for _, _, loss, score in entries:
            if not (math.isfinite(loss) and math.isfinite(score)):
                raise ValueError("loss and score must be finite")
        return entries


class StateRecord(_Record):
    """The hash of the target-expert state a peer computed at the end of the cycle, and the pieces root of its
    checkpoint (swarm/net/pieces.py), so a peer catching up checks every piece from any holder on arrival."""

    state_hash: Hex64
    pieces: Hex64 | None = None


SCHEMAS: dict[str, type[_Record]] = {
    "peers": PeerRecord,
    "commit": CommitRecord,
    "seed-commit": SeedCommitRecord,
    "reveal": RevealRecord,
    "seed-reveal": SeedReveal,
    "ranking": RankingRecord,
    "state": StateRecord,
}
KINDS: tuple[str, ...] = tuple(SCHEMAS)


class DHTLike(Protocol):
    """What store_record/get_records need: hivemind's DHT (or a test double)."""

    def store(self, key: Any, value: Any, expiration_time: float, subkey: Any = None, **kwargs: Any) -> Any: ...

    def get(self, key: Any, latest: bool = False, **kwargs: Any) -> Any: ...


def record_key(run_id: str, cycle: int, kind: str) -> str:
    """The DHT key for one kind of record in one cycle of one run."""
    if kind not in KINDS:
        raise RecordError(f"unknown record kind {kind!r}: use one of {', '.join(KINDS)}")
    return f"{run_id}/{int(cycle)}/{kind}"


def _canonical(parts: list[Any]) -> bytes:
    """Unambiguous bytes for hashing: JSON list, no whitespace."""
    return json.dumps(parts, separators=(",", ":"), ensure_ascii=True).encode()


def commit_digest(run_id: str, cycle: int, miner_id: str, payload_hash: str) -> str:
    """Binds the payload to this run, cycle and miner, so copying a commit gains nothing."""
    return hashlib.sha256(_canonical(["teft-commit", run_id, int(cycle), miner_id, payload_hash])).hexdigest()


def seed_digest(seed: bytes | str, cycle: int, validator_id: str) -> str:
    """Commits a validator to its seed before miners reveal; seed is bytes or hex."""
    seed_hex = seed.hex() if isinstance(seed, bytes) else seed.lower()
    return hashlib.sha256(_canonical(["teft-seed", seed_hex, int(cycle), validator_id])).hexdigest()


def parse_record(kind: str, fields: dict[str, Any]) -> _Record:
    """Validate the fields (without envelope) against the kind's schema."""
    model = SCHEMAS[kind]
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        raise ValueError(f"{model.__name__}: {e.errors()[0]['loc']} {e.errors()[0]['msg']}") from None


def make_value(run_id: str, cycle: int, kind: str, value: _Record | dict[str, Any]) -> dict[str, Any]:
    """Envelope + fields, checked and size-capped, ready for dht.store."""
    record_key(run_id, cycle, kind)
    fields = value.model_dump(mode="python") if isinstance(value, BaseModel) else dict(value)
    if any(name in fields for name in ENVELOPE):
        raise RecordError(f"record fields may not use the envelope names {ENVELOPE}")
    try:
        model = parse_record(kind, fields)
    except ValueError as e:
        raise RecordError(f"{kind} record does not match its schema: {e}") from None
    # JSON mode turns tuples into lists: hivemind's msgpack would encode a tuple as its own extension type
    envelope = {"kind": kind, "run": run_id, "cycle": int(cycle), **model.model_dump(mode="json")}
    size = len(MSGPackSerializer.dumps(envelope))
    if size > MAX_VALUE_BYTES:
        raise RecordError(
            f"{kind} record is {size} bytes, over the {MAX_VALUE_BYTES}-byte cap: "
            "put hashes in the DHT and serve payloads over transfer"
        )
    return envelope


def check_value(value: Any, run_id: str | None = None) -> tuple[str, str, int, _Record]:
    """Parse an envelope value: (kind, run, cycle, record), or ValueError naming the problem."""
    if not isinstance(value, dict):
        raise ValueError(f"value is a {type(value).__name__}, not a record")
    kind, run, cycle = value.get("kind"), value.get("run"), value.get("cycle")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    if not isinstance(run, str) or not (0 < len(run) <= 64):
        raise ValueError("bad run id")
    if run_id is not None and run != run_id:
        raise ValueError(f"record of run {run}, expected {run_id}")
    if not isinstance(cycle, int) or isinstance(cycle, bool) or cycle < 0:
        raise ValueError(f"bad cycle {cycle!r}")
    fields = {k: v for k, v in value.items() if k not in ENVELOPE}
    return kind, run, cycle, parse_record(kind, fields)


@dataclass(frozen=True)
class SignedRecord:
    """One record read back from the DHT, with who signed it."""

    owner: str  # the owner's public key, normalised ("ssh-rsa AAAA...")
    peer_id: str  # the libp2p peer id of that key: where its payloads are served
    record: _Record


def store_record(
    dht: DHTLike,
    run_id: str,
    cycle: int,
    kind: str,
    value: _Record | dict[str, Any],
    identity: Identity,
    expiration: float,
) -> bool:
    """Sign and store one record under the writer's own subkey; expiration is absolute DHT time.

    Returns hivemind's verdict (False when no peer accepted it, e.g. a newer one exists).
    """
    envelope = make_value(run_id, cycle, kind, value)
    return bool(dht.store(record_key(run_id, cycle, kind), envelope, expiration, subkey=identity.subkey))


def get_records(dht: DHTLike, run_id: str, cycle: int, kind: str, latest: bool = True) -> dict[str, SignedRecord]:
    """All valid records of one kind and cycle, by owner peer id; bad ones are logged and dropped.

    An owner key counts only in its canonical form (public_key_from_subkey), so the one record of a peer id
    is the one under its canonical subkey, whatever other encodings of the key a node may have kept.
    """
    key = record_key(run_id, cycle, kind)
    return parse_records(dht.get(key, latest=latest), run_id, cycle, kind)


def get_records_within(dht, run_id: str, cycle: int, kind: str, wait_s: float,
                       pending: Any = None) -> tuple[dict[str, SignedRecord] | None, Any]:
    """(get_records, None), or (None, the read's future) when the DHT has not answered within `wait_s`: a caller
    that can do without the records for now passes that future back as `pending` next time, which then waits
    for no new read, only for the one under way."""
    import concurrent.futures

    future = pending if pending is not None else \
        dht.get(record_key(run_id, cycle, kind), latest=True, return_future=True)
    try:
        found = future.result(wait_s)
    except concurrent.futures.TimeoutError:
        return None, future
    return parse_records(found, run_id, cycle, kind), None


def parse_records(found: Any, run_id: str, cycle: int, kind: str) -> dict[str, SignedRecord]:
    """The valid records in what a DHT read of one kind and cycle returned, by owner peer id."""
    key = record_key(run_id, cycle, kind)
    if found is None:
        return {}
    items = found.value if hasattr(found, "value") else found
    if not isinstance(items, dict):
        logger.warning("dropping %s: not a subkeyed record", key)
        return {}
    records: dict[str, SignedRecord] = {}
    for subkey, item in items.items():
        value = item.value if hasattr(item, "value") else item
        owner = public_key_from_subkey(subkey)
        if owner is None:
            logger.warning("dropping a %s record without an owner key in its subkey", key)
            continue
        try:
            got_kind, _, got_cycle, record = check_value(value, run_id)
            if (got_kind, got_cycle) != (kind, int(cycle)):
                raise ValueError(f"envelope says {got_kind} of cycle {got_cycle}")
        except ValueError as e:
            logger.warning("dropping a malformed %s record from %s: %s", key, owner[:24] + "...", e)
            continue
        try:
            records[peer_key_of(owner)] = SignedRecord(owner, peer_key_of(owner), record)
        except SwarmError:
            logger.warning("dropping a %s record whose owner key does not parse", key)
    return records
