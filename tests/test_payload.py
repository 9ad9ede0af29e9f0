"""A miner's payload on the real roles: its pseudo-gradient through the run's codec, the error-feedback residual
kept in its work directory and restored after a restart, and the manifest's `payload` section."""

from __future__ import annotations

import copy
import threading
from types import SimpleNamespace

import pytest
import torch
import yaml
from swarm_double import FEW_STEPS, REPO, with_few_steps_checks

from swarm.errors import SwarmError
from swarm.launch import write_manifest
from swarm.net.identity import load_or_create
from swarm.protocol.cyclelog import Cycle, CycleLog
from swarm.protocol.manifest import canonical_json, from_dict, load, run_id
from swarm.protocol.runtime import load_runtime
from swarm.protocol.store import Store
from swarm.roles.miner import Miner
from teft.codec import delta_norm
from teft.outer import pseudo_gradient

SPARSE = {"codec": "sparse", "chunk": 1024, "density": 1 / 32, "bits": 2}


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    root = tmp_path_factory.mktemp("payload")
    key = load_or_create(root / "v.key").public_key_str
    path = write_manifest(REPO / "configs" / "tiny.yaml", root / "run" / "run.yaml", [key], 1.9e9,
                          with_few_steps_checks({"quorum": 1, "inner": {**FEW_STEPS, "steps": 3}, "payload": SPARSE}))
    return load_runtime(load(path))


def _miner(rt, workdir) -> Miner:
    """A miner role on a peer that holds Phi_0; a new one on the same work directory is a restarted process."""
    clock = rt.manifest.clock()  # the swarm clock stands at genesis: no commit deadline cuts training short
    peer = SimpleNamespace(rt=rt, manifest=rt.manifest, store=Store(workdir), state=rt.initial_state,
                           me="miner-key", stop=threading.Event(), clock=clock, now=lambda: clock.genesis)
    return Miner(peer)


def _cycle(number: int) -> Cycle:
    return Cycle(number, True, CycleLog(cycle=number, role="miner", peer="miner-key"))


def test_the_residual_is_kept_across_cycles_and_restored_after_a_restart(rt, tmp_path):
    assert rt.payload_size == rt.codec.size and rt.codec.spec.codec == "sparse"
    first = _miner(rt, tmp_path / "w").submission(_cycle(0))
    trained = pseudo_gradient(rt.initial_state, first.state)
    assert rt.codec.decode(first.payload).keys() == first.delta.keys()
    assert all(torch.equal(rt.codec.decode(first.payload)[k], first.delta[k]) for k in first.delta)
    assert all(torch.allclose(first.delta[k] + first.residual[k], trained[k], atol=1e-6) for k in trained)
    assert delta_norm(first.residual) > 0.5 * delta_norm(trained)  # most of a 1/32 top-k stays behind

    # the process is killed and restarted: cycle 1 starts from the residual cycle 0 left on disk
    second = _miner(rt, tmp_path / "w").submission(_cycle(1))
    trained = pseudo_gradient(rt.initial_state, second.state)
    for k in trained:
        assert torch.allclose(second.delta[k] + second.residual[k], trained[k] + first.residual[k], atol=1e-5)
    # killed again inside cycle 1: it retrains from cycle 0's residual, not the one cycle 1 wrote (the retrained
    # delta may differ in the last bits: the BLAS picks its threads by load)
    again = _miner(rt, tmp_path / "w").submission(_cycle(1))
    trained = pseudo_gradient(rt.initial_state, again.state)
    for k in trained:
        assert torch.allclose(again.delta[k] + again.residual[k], trained[k] + first.residual[k], atol=1e-5)
    assert not all(torch.allclose(again.delta[k] + again.residual[k], trained[k] + second.residual[k], atol=1e-5)
                   for k in trained)
    assert sorted(p.name for p in (tmp_path / "w" / "residual").iterdir()) == ["residual-000000.safetensors",
                                                                              "residual-000001.safetensors"]


def test_a_lossless_codec_writes_an_empty_residual(rt, tmp_path):
    from swarm.protocol.runtime import codec_spec
    from teft.codec import Codec

    fp32 = copy.copy(rt)
    fp32.manifest = rt.manifest.model_copy(update={"payload": None})
    fp32.codec = Codec(codec_spec(fp32.manifest), rt.codec.shapes)
    sub = _miner(fp32, tmp_path / "w").submission(_cycle(0))
    assert all(not v.any() for v in sub.residual.values())
    assert Store(tmp_path / "w").load_tagged("residual", before=1) == {}
    assert (tmp_path / "w" / "residual" / "residual-000000.safetensors").stat().st_size < 200


def test_the_payload_section_is_checked_and_absent_keeps_the_run_id(tmp_path):
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw.pop("payload", None)
    raw["validators"], raw["quorum"] = [load_or_create(tmp_path / "v.key").public_key_str], 1
    plain = from_dict(raw)
    assert b'"payload"' not in canonical_json(plain)
    coded = from_dict({**raw, "payload": {"codec": "fp32"}})
    assert run_id(coded) != run_id(plain)
    for bad, message in (({"codec": "zip"}, "payload.codec"), ({"codec": "sparse", "bits": 1}, "payload.bits"),
                         ({"codec": "sparse", "density": 0}, "payload.density"), ({"codec": "int8", "blok": 3},
                                                                                  "payload.blok")):
        with pytest.raises(SwarmError, match=message):
            from_dict({**raw, "payload": bad})
    with pytest.raises(SwarmError, match="not both"):
        from_dict({**raw, "payload_dtype": "bfloat16", "payload": {"codec": "bf16"}})


ENCODED_ATTACKS = ("noise", "poison", "nan", "wrong-shape", "free-rider")


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """Whole cycles with the sparse codec on the real roles: honest miners' residuals on disk, adversaries whose
    payloads arrive encoded."""
    from swarm_double import Swarm

    from swarm.roles import Validator
    from swarm.sim.adversaries import role_for

    # honest updates of the embedded default's inner lr: with FEW_STEPS' small ones, whose sparse payloads carry
    # ~0.005 nats, encoded noise lucky on an 8-block subset cleared the 0.25 merge floor in 1 run of 5
    swarm = Swarm.tiny(tmp_path_factory.mktemp("encoded"), ["validator-0", "validator-1"],
                       {"inner": {**FEW_STEPS, "lr": 3e-3, "steps": 6}, "quorum": 2,
                        "data": {"validation_blocks": 16}, "payload": SPARSE})
    for v in ("validator-0", "validator-1"):
        swarm.add(v, Validator)
    for i in range(2):
        swarm.add(f"miner-{i}", Miner)
    for kind in ENCODED_ATTACKS:
        swarm.add(f"miner-{kind}", role_for(kind))
    swarm.run(cycles=2)
    return swarm


def test_a_sparse_swarm_agrees_merges_honest_miners_only_and_refuses_encoded_attacks(encoded):
    honest = {encoded.peers[f"miner-{i}"].me for i in range(2)}
    rows = {n: encoded.rows(n, 2) for n in ("validator-0", "validator-1", "miner-0", "miner-1")}
    ids = {kind: encoded.peers[f"miner-{kind}"].me for kind in ENCODED_ATTACKS}
    for cycle in range(2):
        hashes = {r[cycle]["state_hash"] for r in rows.values()}
        assert len(hashes) == 1 and "" not in hashes, (cycle, hashes)  # every peer decoded the same bits
        row = rows["validator-0"][cycle]
        names = {peer.me: name for name, peer in encoded.peers.items()}
        assert row["quorum_met"] and row["merged"] and set(row["merged"]) <= honest, \
            (cycle, {names[m]: row["medians"].get(m) for m in row["medians"]})
        for kind in ("nan", "wrong-shape", "poison", "free-rider"):
            assert row["medians"].get(ids[kind], 0.0) == 0.0, kind
    reasons = {}
    for row in rows["validator-0"].values():
        for pid, why in row["rejected"].items():
            reasons.setdefault(pid, why)
    assert "non-finite" in reasons[ids["nan"]]
    assert "shape" in reasons[ids["wrong-shape"]]
    assert "no update" in reasons[ids["free-rider"]]
    assert rows["validator-0"][1]["target_loss"] < rows["validator-0"][0]["start_target_loss"]
    # each honest miner kept what its payloads did not carry
    for i in range(2):
        kept = encoded.peers[f"miner-{i}"].store.load_tagged("residual", before=2)
        assert kept and delta_norm(kept) > 0


def test_a_checkpoint_fits_the_catch_up_limit_whatever_the_payload_codec(rt):
    """A peer catching up fetches an outer checkpoint (fp32 state and momentum), not a payload: its limit follows
    from the state. Sized from 4 payloads, it refused every checkpoint once payloads were int8 (a late joiner and
    a miner back from a partition never caught up in the end-to-end lab swarm)."""
    from teft.outer import checkpoint_bytes

    state = rt.initial_state
    data = checkpoint_bytes(state, {k: 0.5 * v for k, v in state.items()})
    assert len(data) <= rt.checkpoint_limit < 3 * len(data)
    assert len(data) > 4 * rt.payload_size + 65536  # what the limit was: a sparse payload is 36x smaller
