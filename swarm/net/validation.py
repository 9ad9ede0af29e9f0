"""What every honest DHT node accepts: well-formed, owner-signed swarm records of this run, one per owner
per key, never for cycles ahead of the clock.

hivemind hands validators only the *hash* of the key, so every value carries its own envelope {"kind",
"run", "cycle", ...}; SchemaCheck recomputes the key hash from it and refuses the record unless it matches
the key it was stored under. The owner-marker rule here is the same one get_records applies on read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils.serializer import MSGPackSerializer

from swarm.net.identity import public_key_from_subkey
from swarm.net.records import MAX_VALUE_BYTES, check_value, record_key

logger = logging.getLogger("swarm.net.records")


@dataclass(frozen=True)
class CycleHorizon:
    """The latest cycle a record may be for right now: the current one plus one (a clock a little ahead).

    Records stored ahead for future cycles (to outvote or pre-empt honest ones) are refused; a plain
    dataclass so the DHT child process can take it along.
    """

    genesis: float
    cycle_length: float

    def __call__(self) -> int:
        from hivemind.utils.timed_storage import get_dht_time

        return int((get_dht_time() - self.genesis) // self.cycle_length) + 1


class SchemaCheck(RecordValidatorBase):
    """Rejects records that are not well-formed, owner-signed swarm records of this run.

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
            kind, run, cycle, _ = check_value(value, self.run_id)
        except ValueError as e:
            logger.debug("refusing a record: %s", e)
            return False
        if self.horizon is not None and cycle > self.horizon():
            logger.debug("refusing a %s record for cycle %d, ahead of the clock", kind, cycle)
            return False
        if DHTID.generate(source=record_key(run, cycle, kind)).to_bytes() != record.key:
            logger.debug("refusing a %s record stored under a key other than its own", kind)
            return False
        if owner_of_serialized_subkey(record.subkey) is None:
            logger.debug("refusing a %s record whose subkey is not exactly one canonical owner marker", kind)
            return False
        return True

    @property
    def priority(self) -> int:
        """Below RSASignatureValidator's 10, so it sees the value with the signature stripped."""
        return 0


def owner_of_serialized_subkey(subkey: bytes | None) -> str | None:
    """The owner key of a subkey as it travels (msgpack bytes), under the one rule both sides apply.

    The subkey must decode to exactly `[owner:<normalised key>]` and re-encode to the very same bytes:
    anything else (a suffix that gives one owner unlimited subkeys, a non-canonical msgpack encoding that
    makes hivemind drop the key's whole value) is refused before it is stored.
    """
    if not subkey:
        return None
    try:
        decoded = MSGPackSerializer.loads(subkey)
    except Exception:  # noqa: BLE001 - any decoding failure means a malformed subkey
        return None
    if MSGPackSerializer.dumps(decoded) != subkey:
        return None
    return public_key_from_subkey(decoded)
