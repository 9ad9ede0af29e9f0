"""One key, one encoding, bounded storage: an outsider's raw hivemind node against honest DHT nodes.

The attacker here is a bare hivemind DHTNode run by the test in its own event loop: it signs records
itself (any subkey bytes, any key) and sends them with hivemind's store RPC to every honest node. The
honest nodes are the project's (start_dht with the default validators and a horizon whose allowlist names
two of them as validators). Unit tests at the top check the pure rules without a DHT.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import math
import pickle
import secrets
import struct
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.node import DHTNode
from hivemind.dht.routing import DHTID
from hivemind.dht.storage import DictionaryDHTValue
from hivemind.dht.validation import CompositeValidator, DHTRecord
from hivemind.p2p import PeerID
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.timed_storage import get_dht_time

from swarm.errors import SwarmError
from swarm.net import records
from swarm.net.dht import start_dht, visible_maddrs
from swarm.net.identity import _wrap, owner_subkey, public_key_from_subkey
from swarm.net.keys import canonical_public_key, check_public_key
from swarm.net.validation import (
    MAX_SUBKEYS_PER_KEY,
    BoundedStorage,
    CycleHorizon,
    OwnerKeyCheck,
    SchemaCheck,
    owner_of_serialized_subkey,
)

RUN = "0123456789abcdef"
CYCLE_S = 60.0
NOW = 20  # the cycle the honest nodes' clock is in


# -- keys of the attacker's choosing --------------------------------------------------------------------------


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _mpint(x: int, pad: int = 0) -> bytes:
    """An OpenSSH mpint, with `pad` extra leading zero bytes (still the same number to a parser)."""
    return _ssh_string(b"\0" * pad + x.to_bytes(x.bit_length() // 8 + 1, "big"))


def _key_text(e: int, n: int, e_pad: int = 0, n_pad: int = 0) -> str:
    blob = _ssh_string(b"ssh-rsa") + _mpint(e, e_pad) + _mpint(n, n_pad)
    return "ssh-rsa " + base64.b64encode(blob).decode()


def _variants(public: rsa.RSAPublicKey, count: int) -> list[str]:
    """`count` encodings of one key other than its canonical one: every one parses to the same key."""
    nums = public.public_numbers()
    return [_key_text(nums.e, nums.n, e_pad=1 + i % 16, n_pad=i // 16) for i in range(count)]


def _private(p: int, q: int, e: int) -> rsa.RSAPrivateKey:
    """The RSA key of primes p, q and exponent e (any e coprime to lcm(p-1, q-1))."""
    d = pow(e, -1, math.lcm(p - 1, q - 1))
    public = rsa.RSAPublicNumbers(e, p * q)
    return rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), public).private_key(
        unsafe_skip_rsa_key_validation=True)


@pytest.fixture(scope="module")
def fresh_keys() -> list[rsa.RSAPrivateKey]:
    """1056 distinct, valid 2048-bit e=65537 keys, cheaply: the primes of 33 generated keys, crossed."""
    bases = [rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers() for _ in range(33)]
    keys = [_private(a.p, b.q, 65537) for a in bases for b in bases if a is not b]
    assert all(k.key_size == 2048 for k in keys)
    return keys


def _huge_exponent_keys(count: int) -> list[rsa.RSAPrivateKey]:
    """`count` validly usable keys of one 2048-bit modulus, each with a random ~2040-bit public exponent."""
    base = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    lam = math.lcm(base.p - 1, base.q - 1)
    keys = []
    while len(keys) < count:
        e = secrets.randbits(2040) | 1 << 2039 | 1
        if math.gcd(e, lam) == 1:
            keys.append(_private(base.p, base.q, e))
    return keys


def _text(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


# -- the attacker's raw node ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Forged:
    """One record as the attacker sends it: signed by `signer` over exactly these subkey bytes."""

    key: str
    owner_text: str  # what goes between `[owner:` and `]`
    value: dict
    expiration: float
    signer: rsa.RSAPrivateKey


def _signed(item: Forged) -> tuple[DHTID, bytes, bytes, float]:
    key_id = DHTID.generate(source=item.key)
    subkey = b"[owner:" + item.owner_text.encode() + b"]"
    value = MSGPackSerializer.dumps(item.value)
    record = DHTRecord(key_id.to_bytes(), MSGPackSerializer.dumps(subkey), value, item.expiration)
    signature = _wrap(item.signer).sign(MSGPackSerializer.dumps(dataclasses.astuple(record)))
    return key_id, subkey, value + b"[signature:" + signature + b"]", item.expiration


async def _send(maddrs: list[str], targets: list[str], items: list[Forged], in_cache: bool) -> dict[str, int]:
    node = await DHTNode.create(initial_peers=maddrs, client_mode=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    try:
        signed = [_signed(item) for item in items]
        accepted = {}
        for target in targets:
            peer, count = PeerID.from_base58(target), 0
            for i in range(0, len(signed), 50):
                keys, subkeys, values, expirations = zip(*signed[i:i + 50], strict=True)
                done = await node.protocol.call_store(peer, list(keys), list(values), list(expirations),
                                                      subkeys=list(subkeys), in_cache=in_cache)
                count += sum(bool(ok) for ok in done or [])
            accepted[target] = count
        return accepted
    finally:
        await node.shutdown()


def attack(honest, items: list[Forged], in_cache: bool = False) -> dict[str, int]:
    """Send every record to every honest node; how many each accepted."""
    ids, nodes = honest
    maddrs = [m for n in nodes for m in visible_maddrs(n)]
    return asyncio.run(_send(maddrs, [i.peer_key for i in ids], items, in_cache))


async def _held(key: str, _dht, node) -> int:
    """In an honest DHT process: how many records of `key` this node keeps."""
    found = node.protocol.storage.get(DHTID.generate(source=key))
    return len(found.value) if found is not None and isinstance(found.value, DictionaryDHTValue) else 0


async def _verifications(_dht, node) -> int:
    """In an honest DHT process: how many RSA signature checks it has run since the first call."""
    from hivemind.utils import crypto

    cls = crypto.RSAPublicKey
    if not hasattr(cls, "_test_calls"):
        original = cls.verify

        def counted(self, data, signature):
            cls._test_calls += 1
            return original(self, data, signature)

        cls._test_calls, cls.verify = 0, counted
    return cls._test_calls


def held(node, kind: str, cycle: int = NOW) -> int:
    return node.run_coroutine(functools.partial(_held, records.record_key(RUN, cycle, kind)))


def read(node, kind: str, cycle: int = NOW) -> tuple[dict[str, records.SignedRecord], float]:
    started = time.perf_counter()
    found = records.get_records(node, RUN, cycle, kind)
    return found, time.perf_counter() - started


def _value(kind: str, cycle: int = NOW) -> dict:
    fields = {"commit": records.CommitRecord(digest="0" * 64),
              "ranking": records.RankingRecord(entries=[]),
              "peers": records.PeerRecord(role="miner", version="x")}[kind]
    return records.make_value(RUN, cycle, kind, fields)


def _forged(kind: str, owner_text: str, signer, cycle: int = NOW, expiration: float | None = None) -> Forged:
    return Forged(records.record_key(RUN, cycle, kind), owner_text, _value(kind, cycle),
                  expiration if expiration is not None else get_dht_time() + 2 * CYCLE_S, signer)


def _horizon(validators) -> CycleHorizon:
    return CycleHorizon(get_dht_time() - (NOW + 0.5) * CYCLE_S, CYCLE_S).admitting(validators)


@pytest.fixture
def honest(make_identity):
    """Three honest nodes; the first two are the run's allowlisted validators, the third a miner."""
    ids = [make_identity(f"honest-{i}") for i in range(3)]
    horizon = _horizon([i.public_key_str for i in ids[:2]])
    nodes = []
    try:
        nodes.append(start_dht(ids[0], run_id=RUN, horizon=horizon))
        for ident in ids[1:]:
            nodes.append(start_dht(ident, visible_maddrs(nodes[0]), run_id=RUN, horizon=horizon))
        yield ids, nodes
    finally:
        for node in nodes:
            node.shutdown()


def put(ident, node, kind: str, cycle: int = NOW) -> None:
    fields = {"commit": records.CommitRecord(digest="1" * 64),
              "ranking": records.RankingRecord(entries=[]),
              "peers": records.PeerRecord(role="x", version="x")}[kind]
    assert records.store_record(node, RUN, cycle, kind, fields, ident, get_dht_time() + 2 * CYCLE_S)


# -- the pure rules -------------------------------------------------------------------------------------------


def test_one_key_has_one_canonical_text():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    text = _text(key)
    assert canonical_public_key(text) and public_key_from_subkey(owner_subkey(text)) == text
    assert owner_of_serialized_subkey(MSGPackSerializer.dumps(owner_subkey(text))) == text
    variants = _variants(key.public_key(), 40)
    for other in variants:  # the same key to every parser, hivemind's included
        assert serialization.load_ssh_public_key(other.encode()).public_numbers() == key.public_key().public_numbers()
    weak = [_text(rsa.generate_private_key(public_exponent=3, key_size=2048)),
            _text(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            _text(_huge_exponent_keys(1)[0])]
    for other in [*variants, *weak, text + " a comment"]:
        assert not canonical_public_key(other), other[-30:]
        assert public_key_from_subkey(b"[owner:" + other.encode() + b"]") is None
        assert owner_of_serialized_subkey(MSGPackSerializer.dumps(b"[owner:" + other.encode() + b"]")) is None
    for other in [*variants, *weak]:  # a manifest cannot list a key no record could be owned by
        with pytest.raises(SwarmError):
            check_public_key(other)
    check_public_key(text + " a comment")  # pasted with its comment: normalised, then canonical


def test_a_huge_exponent_is_refused_before_any_signature_check(monkeypatch):
    """OwnerKeyCheck runs first (hivemind orders validators by decreasing priority) and refuses the key, so
    hivemind's RSASignatureValidator never verifies: not even a validly signed record costs an RSA check."""
    from hivemind.utils import crypto

    calls = []
    original = crypto.RSAPublicKey.verify
    monkeypatch.setattr(crypto.RSAPublicKey, "verify", lambda self, d, s: calls.append(1) or original(self, d, s))
    mine = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    chain = CompositeValidator([RSASignatureValidator(_wrap(mine)), SchemaCheck(RUN), OwnerKeyCheck()])
    assert [type(v) for v in reversed(chain._validators)] == [OwnerKeyCheck, RSASignatureValidator, SchemaCheck]
    huge = _huge_exponent_keys(3)
    for key in huge:
        key_id, subkey, value, exp = _signed(_forged("commit", _text(key), key))
        assert not chain.validate(DHTRecord(key_id.to_bytes(), MSGPackSerializer.dumps(subkey), value, exp))
    assert calls == []
    key_id, subkey, value, exp = _signed(_forged("commit", _text(mine), mine))
    assert chain.validate(DHTRecord(key_id.to_bytes(), MSGPackSerializer.dumps(subkey), value, exp))
    assert calls == [1]  # the canonical key's record is verified, once


def test_the_horizon_bounds_cycles_expiry_and_owners():
    v, m, other = (_text(rsa.generate_private_key(public_exponent=65537, key_size=2048)) for _ in range(3))
    horizon = _horizon([v]).admitting([v], [m])
    assert pickle.loads(pickle.dumps(horizon)) == horizon  # it travels to the DHT process
    now = get_dht_time()
    ok = now + 3 * CYCLE_S
    assert horizon.refuses("commit", NOW, m, ok) is None
    assert horizon.refuses("ranking", NOW + 1, v, now + 4 * CYCLE_S) is None  # stored one cycle ahead
    assert "ahead" in horizon.refuses("commit", NOW + 2, m, ok)
    assert "old" in horizon.refuses("commit", NOW - 10, m, ok)
    assert horizon.refuses("state", NOW - 4, other, ok) is None
    assert "expiring" in horizon.refuses("commit", NOW, m, now + 365 * 86400)
    assert "allowlisted" in horizon.refuses("ranking", NOW, other, ok)
    assert "allowlisted" in horizon.refuses("seed-reveal", NOW, m, ok)
    assert "miner" in horizon.refuses("reveal", NOW, other, ok)
    assert horizon.refuses("peers", NOW, other, ok) is None and horizon.refuses("state", NOW, other, ok) is None
    assert _horizon([v]).refuses("commit", NOW, other, ok) is None  # no miners list: commits are open


def test_bounded_storage_caps_a_key_and_the_node():
    owners = [_text(k) for k in (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(5))]
    storage = BoundedStorage(max_subkeys=3, max_bytes=10_000, allowlist=[owners[4]])
    key, exp = DHTID.generate(source="k"), get_dht_time() + 60
    subkeys = [owner_subkey(o) for o in owners]
    assert all(storage.store(key, b"v", exp, subkey=s) for s in subkeys[:3])
    assert not storage.store(key, b"v", exp, subkey=subkeys[3])  # full: a new owner is refused
    assert storage.store(key, b"w", exp + 1, subkey=subkeys[0])  # an owner held replaces its own
    assert storage.store(key, b"v", exp, subkey=subkeys[4])  # the allowlist is never refused
    assert len(storage.get(key).value) == 4
    copy = storage.get(key).value
    copy.store(b"[owner:x]", b"v", exp)  # what hivemind's read does with the first value it finds
    assert len(storage.get(key).value) == 4
    merged = DictionaryDHTValue()
    for i in range(10):
        merged.store(b"[owner:%d]" % i, b"v", exp)
    assert storage.store(DHTID.generate(source="k2"), merged, exp)  # a read result, cached record by record
    assert len(storage.get(DHTID.generate(source="k2")).value) == 3
    big = b"x" * 3000
    stored = sum(storage.store(DHTID.generate(source=f"b{i}"), big, exp, subkey=subkeys[1]) for i in range(10))
    assert stored < 10 and storage.held_bytes() <= 10_000
    assert storage.store(DHTID.generate(source="b-last"), big, exp, subkey=subkeys[4])  # allowlisted still


# -- against honest nodes -------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_encoding_variants_of_one_key_are_one_owner(honest, fresh_keys):
    ids, nodes = honest
    put(ids[2], nodes[2], "commit")
    owner = fresh_keys[0]
    items = [_forged("commit", _text(owner), owner)]
    items += [_forged("commit", text, owner) for text in _variants(owner.public_key(), 300)]
    accepted = attack(honest, items)
    assert all(count == 1 for count in accepted.values()), accepted  # the canonical one only
    for node in nodes:
        assert held(node, "commit") == 2
        found, took = read(node, "commit")
        assert set(found) == {ids[2].peer_key, records.peer_key_of(_text(owner))}
    print(f"\n300 encoding variants: accepted {accepted}; read in {took:.3f}s")


@pytest.mark.timeout(240)
def test_huge_exponent_keys_are_refused_unverified(honest):
    ids, nodes = honest
    put(ids[2], nodes[2], "commit")
    before = [n.run_coroutine(_verifications) for n in nodes]
    keys = _huge_exponent_keys(300)
    started = time.perf_counter()
    accepted = attack(honest, [_forged("commit", _text(k), k) for k in keys])
    sent_s = time.perf_counter() - started
    after = [n.run_coroutine(_verifications) for n in nodes]
    assert not any(accepted.values()), accepted
    assert after == before, (before, after)  # not one RSA verification on any honest node
    for node in nodes:
        found, took = read(node, "commit")
        assert set(found) == {ids[2].peer_key}
    print(f"\n300 huge-exponent records refused in {sent_s:.2f}s; read in {took:.3f}s")


@pytest.mark.timeout(240)
def test_a_validator_storing_a_variant_of_its_own_key_is_still_counted_once(honest):
    ids, nodes = honest
    validators = {i.public_key_str for i in ids[:2]}
    for ident, node in zip(ids[:2], nodes, strict=False):
        put(ident, node, "ranking")
    mine = serialization.load_der_private_key(ids[0].private_key.to_bytes(), password=None)
    accepted = attack(honest, [_forged("ranking", text, mine) for text in _variants(mine.public_key(), 20)])
    assert not any(accepted.values()), accepted
    for node in nodes:
        found, _ = read(node, "ranking")
        assert {s.owner for s in found.values()} == validators  # both counted, by their canonical keys
        assert held(node, "ranking") == 2


@pytest.mark.timeout(240)
def test_long_lived_and_stale_records_are_refused(honest, fresh_keys):
    ids, nodes = honest
    key = fresh_keys[1]
    year = get_dht_time() + 365 * 86400
    refused = attack(honest, [_forged("commit", _text(key), key, expiration=year),
                              _forged("commit", _text(key), key, cycle=NOW - 10)])
    assert not any(refused.values()), refused
    for node in nodes:
        assert held(node, "commit") == 0 and held(node, "commit", NOW - 10) == 0
    accepted = attack(honest, [_forged("commit", _text(key), key)])  # the same owner, in its window
    assert all(count == 1 for count in accepted.values()), accepted


@pytest.mark.timeout(240)
def test_a_flood_stored_one_cycle_ahead_blinds_nobody(honest, fresh_keys):
    ids, nodes = honest
    ahead = NOW + 1
    flood = [_forged(kind, _text(k), k, cycle=ahead) for kind in ("commit", "ranking") for k in fresh_keys[:200]]
    accepted = attack(honest, flood)
    for ident, node in zip(ids[:2], nodes, strict=False):
        put(ident, node, "ranking", ahead)
    put(ids[2], nodes[2], "commit", ahead)
    validators = {i.peer_key for i in ids[:2]}
    slowest = 0.0
    for node in nodes:
        rankings, took = read(node, "ranking", ahead)
        assert set(rankings) == validators  # a ranking from a key off the allowlist is not even stored
        assert held(node, "ranking", ahead) == 2
        commits, took2 = read(node, "commit", ahead)
        assert ids[2].peer_key in commits and len(commits) == 201
        slowest = max(slowest, took, took2)
    print(f"\nflood of 2 x 200 keys one cycle ahead: accepted {accepted}; slowest read {slowest:.3f}s")


@pytest.mark.timeout(240)
def test_a_full_key_refuses_new_owners_but_never_the_allowlist(honest, fresh_keys):
    ids, nodes = honest
    put(ids[2], nodes[2], "peers")  # a miner announced before the flood
    flood = [_forged("peers", _text(k), k) for k in fresh_keys[:MAX_SUBKEYS_PER_KEY + 30]]
    accepted = attack(honest, flood)
    put(ids[0], nodes[0], "peers")  # an allowlisted validator announces after it
    slowest = 0.0
    for node in nodes:
        assert held(node, "peers") == MAX_SUBKEYS_PER_KEY + 1  # the cap, plus the validator
        found, took = read(node, "peers")
        assert {ids[0].peer_key, ids[2].peer_key} <= set(found)
        slowest = max(slowest, took)
    assert all(count == MAX_SUBKEYS_PER_KEY - 1 for count in accepted.values()), accepted
    print(f"\nkey at its cap ({MAX_SUBKEYS_PER_KEY} + 1 records): slowest read {slowest:.3f}s")


@pytest.mark.timeout(240)
def test_a_record_pushed_into_the_cache_hides_nothing(honest, fresh_keys, make_identity):
    """hivemind answers a read with whichever of a node's storage or cache value of the key expires later: a
    record sent with in_cache=True that outlives the honest ones would be all a node answers with, unless the
    cache is the (bounded) storage itself."""
    ids, nodes = honest
    put(ids[2], nodes[2], "commit")
    key = fresh_keys[2]
    late = get_dht_time() + 3.9 * CYCLE_S  # within the expiry cap, after the honest record's
    accepted = attack(honest, [_forged("commit", _text(key), key, expiration=late)], in_cache=True)
    assert all(count == 1 for count in accepted.values()), accepted
    reader = start_dht(make_identity("reader"), visible_maddrs(nodes[0]), run_id=RUN, client_mode=True)
    try:
        found, _ = read(reader, "commit")
        assert set(found) == {ids[2].peer_key, records.peer_key_of(_text(key))}
    finally:
        reader.shutdown()


def test_commits_and_reveals_without_the_runs_proof_of_work_are_not_stored():
    """With commit_work_bits set, an honest node stores a commit, or a reveal, only with its proof of work:
    filling their keys with free keys first would otherwise cost nothing."""
    from dataclasses import replace

    from swarm.net.identity import peer_key_of
    from swarm.net.validation import SchemaCheck
    from swarm.net.work import meets, solve

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    check = SchemaCheck(run_id=RUN, horizon=replace(_horizon([]), work_bits=12))
    digest = "ab" * 32

    def stored(nonce: int, kind: str = "commit") -> bool:
        fields = records.CommitRecord(digest=digest, nonce=nonce) if kind == "commit" else \
            records.RevealRecord(payload_hash=payload, size=1, nonce=nonce)
        value = records.make_value(RUN, NOW, kind, fields)
        key_id = DHTID.generate(source=records.record_key(RUN, NOW, kind))
        subkey = MSGPackSerializer.dumps(b"[owner:" + _text(key).encode() + b"]")
        return check.validate(DHTRecord(key_id.to_bytes(), subkey, MSGPackSerializer.dumps(value),
                                        get_dht_time() + CYCLE_S))

    work = solve(digest, 12)
    unworked = next(n for n in range(1000) if not meets(digest, n, 12))
    assert stored(work) and not stored(unworked)
    payload = "cd" * 32  # a reveal proves the commit it opens: the digest binds the owner's peer id and payload
    opened = records.commit_digest(RUN, NOW, peer_key_of(_text(key)), payload)
    assert stored(solve(opened, 12), "reveal") and not stored(next(n for n in range(1000)
                                                                   if not meets(opened, n, 12)), "reveal")
