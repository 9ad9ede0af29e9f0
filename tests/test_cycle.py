"""Whole cycles in one process: miners, validators, adversaries and the reduce on the real roles.

The same promises the end-to-end swarm checks (honest peers agree byte for byte, honest miners are
merged, no adversary is, malformed submissions score zero with a reason, a liar is outvoted, a late
commit never counts), in seconds, on the in-memory DHT and network of tests/swarm_double.py.
"""

from __future__ import annotations

import pytest
from swarm_double import FEW_STEPS, Swarm

from swarm.net.identity import load_or_create
from swarm.roles import Miner, Validator
from swarm.sim.adversaries import role_for

CYCLES = 2
MINER_ADVERSARIES = ("free-rider", "noise", "poison", "nan", "oversize", "copycat", "replay", "late",
                     "wrong-shape", "extra-keys")


def metrics(swarm: Swarm, name: str) -> dict[int, dict]:
    return swarm.rows(name, CYCLES)


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory):
    root = tmp_path_factory.mktemp("cycle")
    swarm = Swarm.tiny(root, ["validator-0", "validator-1", "validator-liar"],
                       {"inner": {**FEW_STEPS, "steps": 4}, "quorum": 2, "data": {"validation_blocks": 8}})
    for v in ("validator-0", "validator-1"):
        swarm.add(v, Validator)
    swarm.add("validator-liar", role_for("liar"))
    swarm.add("validator-stranger", role_for("stranger"))  # not on the allowlist
    for i in range(3):
        swarm.add(f"miner-{i}", Miner)
    for kind in MINER_ADVERSARIES:
        swarm.add(f"miner-{kind}", role_for(kind))
    swarm.run(cycles=CYCLES)
    return swarm


def test_honest_peers_agree_byte_for_byte_every_cycle(adversarial):
    honest = [n for n in adversarial.peers if n in ("validator-0", "validator-1") or n[-1].isdigit()]
    for cycle in range(CYCLES):
        hashes = {metrics(adversarial, n)[cycle]["state_hash"] for n in honest}
        assert len(hashes) == 1 and "" not in hashes, (cycle, hashes)


def test_honest_miners_are_merged_and_no_adversary_ever(adversarial):
    honest = {adversarial.peers[f"miner-{i}"].me for i in range(3)}
    for cycle, row in metrics(adversarial, "validator-0").items():
        assert row["quorum_met"] and row["merged"], (cycle, row)
        assert set(row["merged"]) <= honest, (cycle, row["merged"])


def test_the_state_learns(adversarial):
    rows = metrics(adversarial, "validator-0")
    assert rows[CYCLES - 1]["target_loss"] < rows[0]["start_target_loss"] - 0.01


def test_every_malformed_submission_scores_zero_with_its_reason(adversarial):
    ids = {name: peer.me for name, peer in adversarial.peers.items()}
    reasons = {}
    for row in metrics(adversarial, "validator-0").values():
        for pid, why in row["rejected"].items():
            reasons.setdefault(pid, why)
        for kind in ("nan", "wrong-shape", "extra-keys", "oversize", "poison", "free-rider"):
            assert row["medians"].get(ids[f"miner-{kind}"], 0.0) == 0.0, kind
    assert "non-finite" in reasons[ids["miner-nan"]]
    assert "shape" in reasons[ids["miner-wrong-shape"]]
    assert "key set" in reasons[ids["miner-extra-keys"]]
    assert "more than" in reasons[ids["miner-oversize"]]
    assert reasons[ids["miner-copycat"]] in ("reveal does not match its commit", "committed but did not reveal")
    assert any("replayed payload" in r["rejected"].get(ids["miner-replay"], "")
               for r in metrics(adversarial, "validator-0").values())


def test_late_commits_and_unlisted_validators_do_not_count(adversarial):
    late, stranger = adversarial.peers["miner-late"].me, adversarial.peers["validator-stranger"].me
    liar = adversarial.peers["validator-liar"].me
    for row in metrics(adversarial, "validator-0").values():
        assert late not in row["scores"] and late not in row["medians"]
        assert stranger not in row["rankings"] and liar in row["rankings"]


# A lone miner's update must clear the validation blocks' noise to be merged: 2 steps of FEW_STEPS on 8 blocks
# scored 0.0 in 3 of 14 runs (CI failed on one), 4 steps once in a suite run with the other worker busy; 8 steps
# scored on 16 blocks.
LONE_STEPS = 8


def test_operators_can_admit_listed_miners_only(tmp_path):
    keys = {n: load_or_create(tmp_path / f"{n}.key") for n in ("validator", "listed", "unlisted")}
    swarm = Swarm.tiny(tmp_path, ["validator"], {"inner": {**FEW_STEPS, "steps": LONE_STEPS}, "quorum": 1,
                                                 "miners": [keys["listed"].public_key_str],
                                                 "data": {"validation_blocks": 16, "private_validation": False}})
    swarm.add("validator", Validator, identity=keys["validator"])
    swarm.add("listed", Miner, identity=keys["listed"])
    swarm.add("unlisted", Miner, identity=keys["unlisted"])
    swarm.run(cycles=1)
    row = swarm.rows("validator", 1)[0]
    assert row["merged"] == [keys["listed"].peer_key]
    assert keys["unlisted"].peer_key not in row["scores"] and keys["unlisted"].peer_key not in row["rejected"]


def test_a_swarm_that_missed_a_cycle_carries_the_state_forward(tmp_path):
    """Every peer started during cycle 1: nobody reduced cycle 0, so Phi_0 carries forward and cycle 1 runs."""
    swarm = Swarm.tiny(tmp_path, ["validator"], {"inner": {**FEW_STEPS, "steps": LONE_STEPS}, "quorum": 1,
                                                 "data": {"validation_blocks": 16, "private_validation": False}})
    swarm.add("validator", Validator)
    swarm.add("miner", Miner)
    swarm.run(cycles=2, start_cycle=1)
    first = swarm.rows("validator", 2)[1]
    assert first["merged"] == [swarm.peers["miner"].me] and first["state_hash"]
