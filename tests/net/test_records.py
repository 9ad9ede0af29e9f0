"""Records: schema, size cap, signatures, and owner-only subkeys on a real DHT."""

from __future__ import annotations

import logging

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.timed_storage import ValueWithExpiration, get_dht_time

from swarm.errors import RecordError
from swarm.net.records import (
    MAX_RANKED,
    MAX_VALUE_BYTES,
    CommitRecord,
    PeerRecord,
    RevealRecord,
    SeedReveal,
    commit_digest,
    get_records,
    make_value,
    record_key,
    seed_digest,
    store_record,
)
from swarm.net.validation import SchemaCheck

RUN = "0123456789abcdef"
H = "ab" * 32


def test_digests_bind_every_input():
    base = commit_digest(RUN, 3, "QmMiner", H)
    assert base == commit_digest(RUN, 3, "QmMiner", H) and len(base) == 64
    assert (
        len(
            {
                base,
                commit_digest(RUN, 4, "QmMiner", H),
                commit_digest(RUN, 3, "QmOther", H),
                commit_digest(RUN, 3, "QmMiner", "cd" * 32),
                commit_digest("f" * 16, 3, "QmMiner", H),
            }
        )
        == 5
    )
    assert seed_digest(b"\x01" * 32, 2, "QmV") == seed_digest("01" * 32, 2, "QmV")
    assert seed_digest(b"\x01" * 32, 2, "QmV") != seed_digest(b"\x01" * 32, 3, "QmV")


def test_oversize_refused_before_storing(monkeypatch):
    class NoStore:
        def store(self, *a, **k):
            raise AssertionError("must not reach the DHT")

    # a peers record holds at most 8 addresses of 160 characters, so that a key full of them reads in one message
    long = [f"/ip4/127.0.0.1/tcp/{i}/p2p/" + "Q" * 46 for i in range(16)]
    with pytest.raises(RecordError, match="schema"):
        store_record(NoStore(), RUN, 1, "peers", {"role": "miner", "version": "1", "maddrs": long}, None,
                     get_dht_time() + 60)
    maddrs = [f"/ip4/127.0.0.1/tcp/{i}/p2p/" + "Q" * 130 for i in range(8)]  # each field valid, the whole too big
    monkeypatch.setattr("swarm.net.records.MAX_VALUE_BYTES", 1024)
    with pytest.raises(RecordError, match="cap"):
        make_value(RUN, 1, "peers", PeerRecord(role="miner", version="1", maddrs=maddrs))
    with pytest.raises(RecordError, match="cap"):
        store_record(NoStore(), RUN, 1, "peers", {"role": "miner", "version": "1", "maddrs": maddrs}, None,
                     get_dht_time() + 60)
    # a ranking lists at most MAX_RANKED entries, so it never reaches the cap: more is a schema error
    entries = [(f"QmMiner{i:04d}", H, 1.0, 0.5) for i in range(MAX_RANKED + 1)]
    with pytest.raises(RecordError, match="schema"):
        store_record(NoStore(), RUN, 1, "ranking", {"entries": entries}, None, get_dht_time() + 60)
    with pytest.raises(RecordError, match="schema"):
        make_value(RUN, 1, "commit", {"digest": "xyz"})
    with pytest.raises(RecordError, match="unknown record kind"):
        record_key(RUN, 1, "gossip")


def _record(key: str, value, subkey: bytes) -> DHTRecord:
    return DHTRecord(
        DHTID.generate(source=key).to_bytes(), MSGPackSerializer.dumps(subkey), MSGPackSerializer.dumps(value), 1e12
    )


def test_schema_check(make_identity):
    ident = make_identity()
    check = SchemaCheck(run_id=RUN)
    good = make_value(RUN, 5, "reveal", RevealRecord(payload_hash=H, size=10))
    assert check.validate(_record(f"{RUN}/5/reveal", good, ident.subkey))
    seed = make_value(RUN, 5, "seed-reveal", SeedReveal(seed=H))
    assert check.validate(_record(f"{RUN}/5/seed-reveal", seed, ident.subkey))
    # one schema per kind: a seed is not a payload reveal
    with pytest.raises(RecordError, match="schema"):
        make_value(RUN, 5, "reveal", SeedReveal(seed=H))
    # stored under another cycle's key: replay refused
    assert not check.validate(_record(f"{RUN}/6/reveal", good, ident.subkey))
    # no owner key in the subkey: nobody signed it
    assert not check.validate(_record(f"{RUN}/5/reveal", good, b"anyone"))
    # one rule for the owner marker, on store as on read: exactly [owner:KEY], nothing around it, so one
    # owner has one record per key; and the msgpack bytes must be the canonical encoding of that subkey
    for extra in (ident.subkey + b"#2", b"x" + ident.subkey):
        assert not check.validate(_record(f"{RUN}/5/reveal", good, extra))
    raw = _record(f"{RUN}/5/reveal", good, ident.subkey)
    bin32 = b"\xc6" + len(ident.subkey).to_bytes(4, "big") + ident.subkey  # same bytes, non-canonical header
    assert MSGPackSerializer.loads(bin32) == ident.subkey
    assert not check.validate(DHTRecord(raw.key, bin32, raw.value, raw.expiration_time))
    # wrong run, malformed fields, foreign values, oversize
    assert not SchemaCheck(run_id="f" * 16).validate(_record(f"{RUN}/5/reveal", good, ident.subkey))
    bad = {**good, "size": -1}
    assert not check.validate(_record(f"{RUN}/5/reveal", bad, ident.subkey))
    assert not check.validate(_record("something/else", 42, ident.subkey))
    assert SchemaCheck(strict=False).validate(_record("something/else", 42, ident.subkey))
    huge = {**good, "pad": "x" * MAX_VALUE_BYTES}
    assert not check.validate(_record(f"{RUN}/5/reveal", huge, ident.subkey))


def test_get_records_drops_malformed(make_identity, caplog):
    a, b = make_identity("a"), make_identity("b")
    good = make_value(RUN, 2, "commit", CommitRecord(digest=H))
    items = {
        a.subkey: ValueWithExpiration(good, 1e12),
        b.subkey: ValueWithExpiration({**good, "digest": "nothex"}, 1e12),
        b"no-owner": ValueWithExpiration(good, 1e12),
    }

    class FakeDHT:
        def get(self, key, latest=False):
            assert key == f"{RUN}/2/commit"
            return ValueWithExpiration(items, 1e12)

    with caplog.at_level(logging.WARNING, logger="swarm.net.records"):
        got = get_records(FakeDHT(), RUN, 2, "commit")
    assert list(got) == [a.peer_key] and got[a.peer_key].record.digest == H
    assert got[a.peer_key].owner == a.public_key_str
    assert "malformed" in caplog.text and "without an owner key" in caplog.text


@pytest.mark.timeout(240)
def test_signed_records_between_peers(make_identity):
    """Round trip between honest peers; a forger cannot overwrite, a malformed record is dropped."""
    from swarm.net.dht import start_dht, visible_maddrs

    a, b, m, f = (make_identity(n) for n in "abmf")
    dhts = []
    try:
        alice = start_dht(a, run_id=RUN)
        dhts.append(alice)
        join = visible_maddrs(alice)
        bob = start_dht(b, initial_peers=join, run_id=RUN, check_identity_free=False)
        dhts.append(bob)
        assert alice.peer_id.to_base58() == a.peer_key
        exp = get_dht_time() + 120
        digest = commit_digest(RUN, 7, a.peer_key, H)
        assert store_record(alice, RUN, 7, "commit", CommitRecord(digest=digest), a, exp)
        got = get_records(bob, RUN, 7, "commit")
        assert {pid: s.record for pid, s in got.items()} == {a.peer_key: CommitRecord(digest=digest)}

        # bob writes under alice's subkey: his validator cannot sign it, every peer refuses
        assert not store_record(bob, RUN, 7, "commit", {"digest": "cd" * 32}, a, exp + 10)
        assert get_records(alice, RUN, 7, "commit")[a.peer_key].record == CommitRecord(digest=digest)

        # mallory signs her records but does not check schemas; frank checks nothing at all
        mallory = start_dht(
            m, initial_peers=join, check_identity_free=False, record_validators=[RSASignatureValidator(m.private_key)]
        )
        dhts.append(mallory)
        frank = start_dht(f, initial_peers=join, check_identity_free=False, record_validators=[])
        dhts.append(frank)

        # frank validates nothing, so he keeps the forgery locally; honest peers still refuse it
        forged = make_value(RUN, 7, "commit", {"digest": "ef" * 32})
        frank.store(record_key(RUN, 7, "commit"), forged, exp + 20, subkey=a.subkey)
        for reader in (alice, bob):
            assert {pid: s.record for pid, s in get_records(reader, RUN, 7, "commit").items()} == {
                a.peer_key: CommitRecord(digest=digest)}

        # mallory stores a signed but malformed record under her own subkey
        bad = {"kind": "commit", "run": RUN, "cycle": 7, "digest": "not-a-hash"}
        mallory.store(record_key(RUN, 7, "commit"), bad, exp, subkey=m.subkey)
        for reader in (alice, bob):
            got = get_records(reader, RUN, 7, "commit")
            assert m.peer_key not in got and got[a.peer_key].record.digest == digest
    finally:
        for dht in reversed(dhts):
            dht.shutdown()
