"""Run manifest: canonical run id and one-line errors."""

from __future__ import annotations

import copy

import pytest
import yaml

from swarm.errors import SwarmError
from swarm.protocol.manifest import from_dict, is_allowed, load, run_id


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from swarm.net.identity import load_or_create

    d = tmp_path_factory.mktemp("keys")
    return [load_or_create(d / f"v{i}.key").public_key_str for i in range(2)]


@pytest.fixture
def raw(keys):
    return {
        "name": "tiny-math",
        "base_model": {"path": "assets/tiny-moe", "sha256": "a" * 64},
        "expert_map": {"spec": {"method": "esft-gate", "top_p": 0.2}},
        "data": {"train": "data/math.txt", "validation": "data/math-val.txt", "seq_len": 64},
        "timings": {"sync": 5, "train": 60, "commit": 5, "reveal": 5, "evaluate": 20, "reduce": 5},
        "inner": {"steps": 20, "lr": 1e-4, "batch_size": 4},
        "outer": {"lr": 0.7, "momentum": 0.9, "top_k": 4},
        "payload_dtype": "float32",
        "max_delta_norm": 10.0,
        "validators": keys,
        "genesis": "2026-01-01T00:00:00Z",
        "quorum": 1,
    }


def _write(tmp_path, data, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_load_and_clock(tmp_path, raw):
    m = load(_write(tmp_path, raw))
    assert m.genesis == 1767225600.0
    assert m.clock().cycle_length == 100
    assert m.resolve("data/x.txt") == tmp_path.resolve() / "data/x.txt"
    assert len(run_id(m)) == 16


def test_run_id_stable_under_reordering(tmp_path, raw):
    reordered = dict(reversed(list(raw.items())))
    reordered["timings"] = dict(reversed(list(raw["timings"].items())))
    a = load(_write(tmp_path, raw, "a.yaml"))
    b = load(_write(tmp_path, reordered, "b.yaml"))
    assert run_id(a) == run_id(b)
    # the same time written differently is the same run
    c = copy.deepcopy(raw)
    c["genesis"] = 1767225600
    assert run_id(from_dict(c)) == run_id(a)


@pytest.mark.parametrize(
    "path,value",
    [
        (("name",), "other"),
        (("base_model", "sha256"), "b" * 64),
        (("expert_map", "spec", "top_p"), 0.3),
        (("data", "validation"), "code"),
        (("timings", "train"), 61),
        (("inner", "lr"), 2e-4),
        (("outer", "top_k"), 3),
        (("payload_dtype",), "bfloat16"),
        (("max_delta_norm",), 5.0),
        (("genesis",), 1767225601),
        (("quorum",), 2),
    ],
)
def test_run_id_changes_with_any_field(raw, path, value):
    base = run_id(from_dict(raw))
    changed = copy.deepcopy(raw)
    node = changed
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert run_id(from_dict(changed)) != base


def test_run_id_changes_with_validators(raw):
    assert run_id(from_dict({**raw, "validators": raw["validators"][:1]})) != run_id(from_dict(raw))


def _one_line_error(tmp_path, text, *must):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SwarmError) as err:
        load(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    for part in must:
        assert part in msg, msg
    return msg


def test_malformed_yaml(tmp_path):
    _one_line_error(tmp_path, "name: [unclosed\n", "not valid YAML", "line")


def test_missing_extra_and_bad_fields(tmp_path, raw):
    missing = {k: v for k, v in raw.items() if k != "timings"}
    _one_line_error(tmp_path, yaml.safe_dump(missing), "'timings'", "add it")
    extra = copy.deepcopy(raw)
    extra["inner"]["stpes"] = 3
    _one_line_error(tmp_path, yaml.safe_dump(extra), "'inner.stpes'", "spelling")
    bad_key = {**raw, "validators": ["ssh-rsa notakey"]}
    _one_line_error(tmp_path, yaml.safe_dump(bad_key), "'validators'", "swarm.keygen")
    bad_dtype = {**raw, "payload_dtype": "int8"}
    _one_line_error(tmp_path, yaml.safe_dump(bad_dtype), "'payload_dtype'")
    _one_line_error(tmp_path, "- a list\n", "mapping")
    with pytest.raises(SwarmError, match="not found"):
        load(tmp_path / "absent.yaml")


def test_is_allowed(raw, keys, tmp_path):
    from swarm.net.identity import load_or_create

    m = from_dict(raw)
    assert is_allowed(m, keys[0]) and is_allowed(m, keys[1].encode() + b" comment@host")
    assert not is_allowed(m, load_or_create(tmp_path / "stranger.key").public_key)
