"""DHT abuse: blinding a key with a non-canonical subkey, and spamming one key with many subkeys.

dht-blinder stores, straight through hivemind's low-level protocol, a validly signed record whose subkey
is its owner marker in a non-canonical msgpack encoding (a bin32 header where bin16 is canonical): a node
that kept it would drop the whole value of that key on the next read, every honest record included.
subkey-spammer runs its own DHT node without the schema check, so it signs and sends 1000 records under
one key with subkeys `[owner:KEY]#n`. Honest nodes refuse both (records.SchemaCheck); readers keep
reading the honest records of those keys.
"""

from __future__ import annotations

import asyncio
import functools
import struct

from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils.serializer import MSGPackSerializer

from swarm.net import records
from swarm.net.identity import Identity
from swarm.protocol.cyclelog import Cycle
from swarm.roles.miner import Miner

SPAM_SUBKEYS = 1000
TARGETS = ("reveal", "seed-reveal", "ranking", "state")  # keys whose loss would stall a cycle


def bin32(data: bytes) -> bytes:
    """msgpack bytes with a 4-byte length header: decodes to `data`, but is not how msgpack encodes it."""
    return b"\xc6" + struct.pack(">I", len(data)) + data


async def _store_raw(key: str, value: bytes, subkey: bytes, expiration: float, _dht, node) -> int:
    """In the DHT process: sign one record over these exact subkey bytes, send it to every known peer."""
    key_id = DHTID.generate(source=key)
    record = DHTRecord(key_id.to_bytes(), subkey, value, expiration)
    signed = node.protocol.record_validator.sign_value(record)
    peers = list(node.protocol.routing_table.peer_id_to_uid)
    done = await asyncio.gather(*(node.protocol.call_store(peer, [key_id], [signed], [expiration], [subkey])
                                  for peer in peers), return_exceptions=True)
    return sum(1 for d in done if isinstance(d, list) and any(d))


def store_noncanonical(dht, key: str, value: dict, identity: Identity, expiration: float) -> int:
    """Store `value` under `key` with a bin32-encoded owner subkey on every peer the node knows;
    how many accepted it."""
    subkey = bin32(identity.subkey)
    assert MSGPackSerializer.loads(subkey) == identity.subkey and MSGPackSerializer.dumps(identity.subkey) != subkey
    return dht.run_coroutine(functools.partial(_store_raw, key, MSGPackSerializer.dumps(value), subkey, expiration))


def spam_subkeys(owner_subkey: bytes, n: int = SPAM_SUBKEYS) -> list[bytes]:
    """n subkeys that each contain the owner marker (so hivemind's signature check passes) and are not it."""
    return [owner_subkey + b"#%d" % i for i in range(n)]


async def _spam(key: str, value: dict, owner_subkey: bytes, n: int, expiration: float, _dht, node) -> int:
    """In the DHT process (the call itself stays small): n spam records under one key, 200 a request."""
    subkeys = spam_subkeys(owner_subkey, n)
    stored = 0
    for i in range(0, n, 200):
        part = subkeys[i:i + 200]
        done = await node.store_many([key] * len(part), [value] * len(part), expiration, subkeys=part)
        stored += sum(bool(ok) for ok in done.values())
    return stored


def spam(dht, key: str, value: dict, identity: Identity, expiration: float, n: int = SPAM_SUBKEYS) -> int:
    """Store n records of `identity` under `key` with subkeys `[owner:KEY]#i`; how many a node accepted.

    The DHT node must sign without the schema check (SubkeySpammer.record_validators): hivemind's own
    signature check finds the owner marker inside each subkey and signs it.
    """
    return dht.run_coroutine(functools.partial(_spam, key, value, identity.subkey, n, expiration))


class DhtBlinder(Miner):
    """Trains nothing; each cycle, a non-canonical record under every key the cycle depends on."""

    def on_train(self, cycle: Cycle) -> None:
        pass

    def on_commit(self, cycle: Cycle) -> None:
        p = self.peer
        if getattr(p.dht, "run_coroutine", None) is None:
            cycle.log.note += "no hivemind node to send raw records from (in-memory DHT); "
            return
        accepted = {}
        for kind in TARGETS:
            value = records.make_value(p.run_id, cycle.number, kind, _filler(kind, p))
            accepted[kind] = store_noncanonical(p.dht, records.record_key(p.run_id, cycle.number, kind), value,
                                                p.identity, p.clock.cycle_start(cycle.number + 3))
        cycle.log.note += f"non-canonical records accepted by {accepted} peers; "


class SubkeySpammer(Miner):
    """Trains nothing; each cycle, 1000 records of its own under the cycle's ranking key."""

    @classmethod
    def record_validators(cls, identity: Identity, run_id: str, horizon) -> list:
        return [RSASignatureValidator(identity.private_key)]  # no schema check: its own node keeps the spam

    def on_train(self, cycle: Cycle) -> None:
        pass

    def on_commit(self, cycle: Cycle) -> None:
        p = self.peer
        value = records.make_value(p.run_id, cycle.number, "ranking", _filler("ranking", p))
        if getattr(p.dht, "run_coroutine", None) is None:
            cycle.log.note += "no hivemind node to spam from (in-memory DHT); "
            return
        stored = spam(p.dht, records.record_key(p.run_id, cycle.number, "ranking"), value, p.identity,
                      p.clock.cycle_start(cycle.number + 3))
        cycle.log.note += f"{stored} of {SPAM_SUBKEYS} spam records accepted; "


def _filler(kind: str, peer) -> records._Record:
    """A well-formed record of the kind, so only the subkey is wrong."""
    h = "0" * 64
    return {"reveal": records.RevealRecord(payload_hash=h, size=peer.rt.payload_size),
            "seed-reveal": records.SeedReveal(seed=h),
            "ranking": records.RankingRecord(entries=[]),
            "state": records.StateRecord(state_hash=h)}[kind]
