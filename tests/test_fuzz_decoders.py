"""Every decoder a peer exposes to the network, fed what an attacker can send: no crash, no hang, one line.

Record values and subkeys (SchemaCheck on store, get_records on read), payloads of every codec (Codec.decode
and check_delta, what a validator and the reduce run on fetched bytes), state files (from_bytes and check_state)
and outer checkpoints (from_checkpoint and the expert-map check a peer runs before adopting one). The transfer
frames have their own fuzz test in tests/net/.
"""

from __future__ import annotations

import logging

import pytest
import torch
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.timed_storage import ValueWithExpiration
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import build

from swarm.net.identity import load_or_create
from swarm.net.records import CommitRecord, check_value, get_records, make_value, record_key
from swarm.net.validation import SchemaCheck
from teft.codec import Codec, CodecError, CodecSpec, check_delta
from teft.errors import TeftError
from teft.model import discover_layout
from teft.outer import checkpoint_bytes, from_checkpoint
from teft.selection import ExpertMap
from teft.state import check_state, expected_shapes, extract_state, from_bytes, to_bytes

RUN = "0123456789abcdef"
FUZZ = settings(max_examples=150, deadline=2000, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 63 - 1), st.floats(), st.text(max_size=80),
                    st.binary(max_size=80))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=6)),
                      max_leaves=20)


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    return load_or_create(tmp_path_factory.mktemp("fuzz") / "owner.key")


@pytest.fixture(scope="module")
def model_and_map():
    model = build("qwen3_moe")
    layout = discover_layout(model)
    emap = ExpertMap({layer: [0, 1] for layer in range(len(layout.layers))}, layout.num_experts, "esft-token",
                     {"top_k": 2}, 0)
    return model, layout, emap


def _envelope(fields) -> dict:
    return {"kind": "commit", "run": RUN, "cycle": 3, **(fields if isinstance(fields, dict) else {"x": fields})}


@FUZZ
@given(value=values)
def test_record_values_parse_or_are_refused_with_a_value_error(value):
    for candidate in (value, _envelope(value)):
        try:
            check_value(candidate, RUN)
        except ValueError:
            pass


@FUZZ
@given(key=st.binary(max_size=40), subkey=st.binary(max_size=600), value=st.binary(max_size=600),
       fields=values)
def test_schema_check_answers_any_record_with_a_bool(owner, key, subkey, value, fields):
    check = SchemaCheck(run_id=RUN)
    honest_key = DHTID.generate(source=record_key(RUN, 3, "commit")).to_bytes()
    for record in (DHTRecord(key, subkey, value, 1e12),
                   DHTRecord(honest_key, subkey, MSGPackSerializer.dumps(_envelope(fields)), 1e12),
                   DHTRecord(honest_key, MSGPackSerializer.dumps(owner.subkey) + subkey[:3],
                             MSGPackSerializer.dumps(_envelope(fields)), 1e12)):
        assert check.validate(record) in (True, False)


@FUZZ
@given(items=st.dictionaries(st.one_of(st.binary(max_size=60), st.text(max_size=20), st.integers()), values,
                             max_size=5))
def test_get_records_drops_what_it_cannot_read(owner, items, caplog):
    good = make_value(RUN, 3, "commit", CommitRecord(digest="ab" * 32))
    served = {k: ValueWithExpiration(v, 1e12) for k, v in items.items()} | {owner.subkey: ValueWithExpiration(good,
                                                                                                               1e12)}

    class Hostile:
        def get(self, key, latest=False):
            return ValueWithExpiration(served, 1e12)

    with caplog.at_level(logging.WARNING, logger="swarm.net.records"):
        found = get_records(Hostile(), RUN, 3, "commit")
    assert found[owner.peer_key].record.digest == "ab" * 32  # the honest record survives its neighbours


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=8),
       cut=st.integers(min_value=0, max_value=64))
def test_a_mutated_payload_is_refused_with_a_reason_or_passes_every_check(model_and_map, flips, cut):
    model, layout, emap = model_and_map
    base = extract_state(model, layout, emap)
    data = bytearray(to_bytes(base))
    for where, byte in flips:
        data[where % len(data)] = byte
    data = bytes(data[:len(data) - cut])
    try:
        state = from_bytes(data)
    except TeftError:
        return
    reason = check_state(state, layout, emap, dtype=torch.float32, max_norm=5.0, reference=base)
    assert reason is None or isinstance(reason, str)


CODECS = [CodecSpec("fp32"), CodecSpec("bf16"), CodecSpec("int8", block=64),
          CodecSpec("sparse", chunk=256, density=1 / 16, bits=2), CodecSpec("sparse", chunk=100, density=0.1, bits=5)]


@FUZZ
@given(which=st.integers(min_value=0, max_value=len(CODECS) - 1),
       flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=8),
       near_header=st.booleans(), cut=st.integers(min_value=0, max_value=8), junk=st.binary(max_size=200))
def test_a_mutated_payload_of_any_codec_is_refused_with_a_reason_or_decodes_to_the_layout(
        model_and_map, which, flips, near_header, cut, junk):
    model, layout, emap = model_and_map
    base = extract_state(model, layout, emap)
    codec = Codec(CODECS[which], expected_shapes(layout, emap))
    data = bytearray(codec.encode({k: 0.01 * v for k, v in base.items()}))
    for where, byte in flips:  # half the cases hit the header and the scales / indices just after it
        data[where % (64 if near_header else len(data))] = byte
    candidates = [bytes(data), bytes(data[:len(data) - cut]) + junk[:cut], junk]
    for candidate in candidates:
        try:
            delta = codec.decode(candidate)
        except CodecError as err:
            assert "\n" not in str(err)
            continue
        assert len(candidate) == codec.size
        assert {k: tuple(v.shape) for k, v in delta.items()} == dict(codec.shapes)
        reason = check_delta(delta, max_norm=5.0)
        assert reason is None or isinstance(reason, str)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=8),
       junk=st.binary(max_size=200))
def test_a_hostile_checkpoint_is_refused_before_adoption(model_and_map, flips, junk):
    model, layout, emap = model_and_map
    base = extract_state(model, layout, emap)
    data = bytearray(checkpoint_bytes(base, {k: 0.1 * v for k, v in base.items()}))
    for where, byte in flips:
        data[where % len(data)] = byte
    for candidate in (bytes(data), junk):
        try:
            state, momentum = from_checkpoint(candidate)
        except TeftError:
            continue
        # what Peer.adopt checks before it replaces anything
        for part in (state, momentum):
            if part:
                reason = check_state(part, layout, emap)
                assert reason is None or isinstance(reason, str)
