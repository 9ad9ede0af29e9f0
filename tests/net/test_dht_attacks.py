"""DHT abuse against real hivemind nodes on 127.0.0.1: other encodings of the owner key, and a 1000-subkey spam.

Honest nodes (the default validators: OwnerKeyCheck + signature + SchemaCheck) must refuse both, keep every
honest record of the attacked key, and read it about as fast as before the spam. More in test_dht_keys.py.
"""

from __future__ import annotations

import functools
import time

import pytest
from hivemind.dht.routing import DHTID
from hivemind.utils.timed_storage import get_dht_time

from swarm.net import records
from swarm.net.dht import start_dht, visible_maddrs
from swarm.sim.adversaries.dhtabuse import SPAM_SUBKEYS, SubkeySpammer, spam, store_noncanonical

RUN = "feedfacecafebeef"
pytestmark = pytest.mark.timeout(240)


async def _held_subkeys(key: str, _dht, node) -> int:
    """In a DHT process: how many subkeys of `key` this node keeps in its own storage."""
    found = node.protocol.storage.get(DHTID.generate(source=key))
    return len(found.value) if found is not None and hasattr(found.value, "__len__") else 0


@pytest.fixture
def honest(make_identity):
    """Three honest nodes, two of which have stored a ranking record for cycle 0."""
    ids = [make_identity(f"honest-{i}") for i in range(3)]
    nodes = [start_dht(ids[0], run_id=RUN)]
    try:
        for ident in ids[1:]:
            nodes.append(start_dht(ident, visible_maddrs(nodes[0]), run_id=RUN))
        for ident, node in zip(ids[:2], nodes, strict=False):
            assert records.store_record(node, RUN, 0, "ranking", records.RankingRecord(entries=[]), ident,
                                        get_dht_time() + 120)
        yield ids, nodes
    finally:
        for node in nodes:
            node.shutdown()


def _owners(node) -> set[str]:
    return set(records.get_records(node, RUN, 0, "ranking"))


def _read_s(node) -> float:
    start = time.perf_counter()
    node.get(records.record_key(RUN, 0, "ranking"), latest=True)
    return time.perf_counter() - start


def test_a_noncanonical_subkey_is_refused_and_blinds_nobody(honest, make_identity):
    ids, nodes = honest
    writers = {i.peer_key for i in ids[:2]}
    assert all(_owners(n) == writers for n in nodes)
    blinder = make_identity("blinder")
    node = start_dht(blinder, visible_maddrs(nodes[0]), run_id=RUN)
    try:
        key = records.record_key(RUN, 0, "ranking")
        value = records.make_value(RUN, 0, "ranking", records.RankingRecord(entries=[]))
        accepted = store_noncanonical(node, key, value, blinder, get_dht_time() + 120)
        assert accepted == 0  # every honest node answered False: nothing stored anywhere
        for n in nodes:
            assert _owners(n) == writers  # the key's honest records are all still read
            assert n.run_coroutine(functools.partial(_held_subkeys, key)) == 2
    finally:
        node.shutdown()


def test_subkey_spam_is_kept_by_nobody_honest_and_reads_stay_fast(honest, make_identity):
    ids, nodes = honest
    writers = {i.peer_key for i in ids[:2]}
    before = min(_read_s(n) for n in nodes)
    spammer = make_identity("spammer")
    node = start_dht(spammer, visible_maddrs(nodes[0]), run_id=RUN,
                     record_validators=SubkeySpammer.record_validators(spammer, RUN, None))
    try:
        key = records.record_key(RUN, 0, "ranking")
        value = records.make_value(RUN, 0, "ranking", records.RankingRecord(entries=[]))
        spam(node, key, value, spammer, get_dht_time() + 120)
        held_by_spammer = node.run_coroutine(functools.partial(_held_subkeys, key))
        for n in nodes:
            assert n.run_coroutine(functools.partial(_held_subkeys, key)) == 2
        after = max(_read_s(n) for n in nodes)
        assert all(_owners(n) == writers for n in nodes)
        print(f"\nread of the key: {before:.3f}s before, {after:.3f}s with {SPAM_SUBKEYS} spam subkeys "
              f"({held_by_spammer} held by the spammer's own node)")
    finally:
        node.shutdown()
