"""Issue 10's outsiders, whole cycles in one process: a Sybil flood, a stalling server, a state liar, an
overfitter, on the real roles over the in-memory DHT and network of tests/swarm_double.py.

The DHT-level attacks (dht-blinder, subkey-spammer) need real hivemind nodes: tests/net/test_dht_attacks.py.
slowloris needs real libp2p streams: tests/net/test_transfer.py and the end-to-end simulation.
"""

from __future__ import annotations

import pytest
from swarm_double import FEW_STEPS, Swarm

from swarm.net.identity import load_or_create
from swarm.protocol.consensus import agree_on_state
from swarm.roles import Miner, Validator
from swarm.roles.validator import FETCHES_PER_SLOT
from swarm.sim.adversaries import role_for
from swarm.sim.adversaries.flood import GRINDER_KEYS_ENV, SYBILS_ENV, MultiKeySigner, throwaway_keys
from teft.errors import TeftError

CYCLES = 2
SYBILS = 40
ATTACKS = ("slow-server", "state-liar", "val-overfit")


def metrics(swarm: Swarm, name: str) -> dict[int, dict]:
    return swarm.rows(name, CYCLES)


def build(root, kinds) -> Swarm:
    validators = ["validator-0", "validator-1"]
    swarm = Swarm.tiny(root, validators, {"inner": {**FEW_STEPS, "steps": 4}, "quorum": 2,
                                          "data": {"validation_blocks": 16}})
    for v in validators:
        swarm.add(v, Validator)
    for i in range(3):
        swarm.add(f"miner-{i}", Miner)
    for kind in kinds:
        swarm.add(f"miner-{kind}", role_for(kind))
    return swarm


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    swarm = build(tmp_path_factory.mktemp("attacked"), ATTACKS)
    swarm.run(cycles=CYCLES)
    return swarm


@pytest.fixture(scope="module")
def flooded(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SYBILS_ENV, str(SYBILS))
        swarm = build(tmp_path_factory.mktemp("flooded"), ["sybil-flood"])
        swarm.run(cycles=CYCLES)
    return swarm


HONEST = ("validator-0", "validator-1", "miner-0", "miner-1", "miner-2")


@pytest.mark.parametrize("which", ["attacked", "flooded"])
def test_honest_peers_agree_every_cycle(which, request):
    swarm = request.getfixturevalue(which)
    for cycle in range(CYCLES):
        hashes = {metrics(swarm, n)[cycle]["state_hash"] for n in HONEST}
        assert len(hashes) == 1 and "" not in hashes, (which, cycle, hashes)


def test_honest_miners_merged_every_cycle_and_no_staller_or_liar(attacked):
    honest = {attacked.peers[f"miner-{i}"].me for i in range(3)}
    for name in ("miner-slow-server", "miner-state-liar"):
        assert not any(attacked.peers[name].me in r["merged"] for r in metrics(attacked, "validator-0").values())
    for cycle, row in metrics(attacked, "validator-0").items():
        assert row["quorum_met"] and set(row["merged"]) & honest, (cycle, row["merged"])


def test_a_stalled_payload_costs_its_own_slot_only(attacked):
    slow = attacked.peers["miner-slow-server"].me
    for v in ("validator-0", "validator-1"):
        for cycle, row in metrics(attacked, v).items():
            assert "timed out" in row["rejected"][slow], (v, cycle, row["rejected"].get(slow))
            honest = [row["scores"][attacked.peers[f"miner-{i}"].me] for i in range(3)]
            assert sum(s > 0 for s in honest) >= 2, (v, cycle, honest)


def test_a_crafted_state_is_never_adopted_and_crashes_nobody(attacked):
    liar = attacked.peers["miner-state-liar"]
    claimed = set(liar.role.crafted.values())
    assert len(liar.role.crafted) >= CYCLES + 1, liar.role.crafted  # its records were stored, ahead too
    for name in HONEST:
        rows = metrics(attacked, name)
        assert not claimed & ({r["state_hash"] for r in rows.values()} | {r["agreed_hash"] for r in rows.values()})
    honest = attacked.peers["miner-0"]
    held, progress = honest.cycle, honest.progress.checkpoint_hash
    for digest in claimed:  # offered directly, the bytes are refused before anything is replaced
        with pytest.raises(TeftError, match="does not fit"):
            honest.adopt(held, liar.store.find(digest))
    assert (honest.cycle, honest.progress.checkpoint_hash) == (held, progress)


def test_the_public_validation_split_buys_no_outsized_score(attacked):
    """A miner that trains on the public validation split (as much as an honest miner trains) is scored on the
    validators' private held-out data, where that split is just more in-domain text: its score stays in the
    honest range."""
    ids = {name: peer.me for name, peer in attacked.peers.items() if name.startswith("miner-")}
    for cycle, row in metrics(attacked, "validator-0").items():
        honest = [row["medians"].get(ids[f"miner-{i}"], 0.0) for i in range(3)]
        overfit = row["medians"].get(ids["miner-val-overfit"], 0.0)
        assert overfit <= 1.5 * max(honest) + 0.005, (cycle, overfit, honest)


def test_a_sybil_flood_is_admitted_but_bounded(flooded):
    """Every throwaway key's commit and reveal were accepted (so the flood is real); of the keys that announced
    no addresses, all but max_submissions were refused before any fetch (those go after every key with an
    address), the others cost a failed fetch each, never an evaluation; each
    validator tried at most FETCHES_PER_SLOT x max_submissions fetches and scored at most max_submissions,
    merged no Sybil, and met the quorum every cycle."""
    cap = flooded.manifest.max_submissions
    flood = flooded.peers["miner-sybil-flood"]
    sybils = {t.peer_key for t in flood.role.sybils}
    announcing = {t.peer_key for t in flood.role.sybils[::2]}
    assert len(sybils) == SYBILS
    for v in ("validator-0", "validator-1"):
        for cycle, row in metrics(flooded, v).items():
            assert len(row["evaluated"]) <= cap and len(row["scores"]) <= FETCHES_PER_SLOT * cap, (v, cycle)
            assert not sybils & set(row["evaluated"])  # they served nothing: a failed fetch, no evaluation
            assert not sybils & set(row["merged"]) and row["quorum_met"], (v, cycle)
            silent = {pid for pid, why in row["rejected"].items() if why.startswith("announced no addresses")}
            assert silent <= sybils - announcing and len(silent) == len(sybils - announcing) - cap, (v, cycle)
            assert announcing <= set(row["scores"]) and not any(row["scores"][pid] for pid in announcing)


def test_honest_miners_are_merged_every_cycle_of_a_flood(flooded):
    """Keys that serve nothing cost a failed fetch each, not an evaluation: the miners that do serve are
    scored and merged in every cycle."""
    honest = {flooded.peers[f"miner-{i}"].me for i in range(3)}
    for cycle, row in metrics(flooded, "validator-0").items():
        assert honest <= set(row["evaluated"]) and honest & set(row["merged"]), (cycle, row["merged"])


def test_throwaway_keys_survive_a_restart_and_sign_for_their_owner(tmp_path):
    import dataclasses

    from hivemind.dht.crypto import RSASignatureValidator
    from hivemind.dht.validation import DHTRecord
    from hivemind.utils.serializer import MSGPackSerializer

    me = load_or_create(tmp_path / "flood.key")
    first = throwaway_keys(me, 3)
    assert [t.peer_key for t in throwaway_keys(me, 3)] == [t.peer_key for t in first]
    assert len({t.peer_key for t in first} | {me.peer_key}) == 4
    signer = MultiKeySigner([me.private_key] + [t.private_key for t in first])
    for t in first:
        record = DHTRecord(b"k", MSGPackSerializer.dumps(t.subkey), b"v", 1.0)
        signed = dataclasses.replace(record, value=signer.sign_value(record))
        assert RSASignatureValidator(me.private_key).validate(signed)  # any node's check accepts it
        other = dataclasses.replace(signed, subkey=MSGPackSerializer.dumps(first[0 if t is not first[0] else 1].subkey))
        assert not RSASignatureValidator(me.private_key).validate(other)  # and it binds to its own key only


GRINDER_KEYS = 100


@pytest.fixture(scope="module")
def ground(tmp_path_factory):
    """A flood that reveals only the keys the validators' seeds order before every honest miner, as many as
    a validator tries (max_submissions 1: 16 tries): without a reveal deadline before the seeds are out, no
    honest miner would ever be tried."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(GRINDER_KEYS_ENV, str(GRINDER_KEYS))
        root = tmp_path_factory.mktemp("ground")
        validators = ["validator-0", "validator-1"]
        swarm = Swarm.tiny(root, validators, {"inner": {**FEW_STEPS, "steps": 4}, "quorum": 2,
                                              "max_submissions": 1, "data": {"validation_blocks": 16}})
        for v in validators:
            swarm.add(v, Validator)
        for i in range(3):
            swarm.add(f"miner-{i}", Miner)
        swarm.add("miner-seed-grinder", role_for("seed-grinder"))
        swarm.run(cycles=CYCLES)
    return swarm


def test_a_selective_reveal_after_the_seeds_gains_nothing(ground):
    honest = {ground.peers[f"miner-{i}"].me for i in range(3)}
    grinder = ground.peers["miner-seed-grinder"]
    sybils = {t.peer_key for t in throwaway_keys(grinder.identity, GRINDER_KEYS)}
    for cycle in range(CYCLES):
        hashes = {metrics(ground, n)[cycle]["state_hash"] for n in HONEST}
        assert len(hashes) == 1 and "" not in hashes, (cycle, hashes)
        assert "sybil records stored" in metrics(ground, "miner-seed-grinder")[cycle]["note"]  # it did reveal
        for v in ("validator-0", "validator-1"):
            row = metrics(ground, v)[cycle]
            assert row["quorum_met"] and set(row["merged"]) <= honest and row["merged"], (v, cycle, row["merged"])
            late = [pid for pid, why in row["rejected"].items() if why == "revealed after the reveal deadline"]
            assert late and set(late) <= sybils, (v, cycle, row["rejected"])
            assert not set(row["evaluated"]) & sybils


class StateRecordLost(Validator):
    """An honest validator whose state record of cycle 0 never reaches the DHT (down for that reduce)."""

    def on_reduce(self, cycle):
        if cycle.number != 0:
            return super().on_reduce(cycle)
        self.peer.put = lambda *args, **kwargs: False  # this reduce's writes are lost
        try:
            super().on_reduce(cycle)
        finally:
            del self.peer.put


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """Allowlist of 3, quorum 2: an honest validator, one whose cycle-0 state record is lost, and an allowlisted
    forger that publishes a zeroed-experts checkpoint ground to sort before the honest hash: a 1:1 tie."""
    root = tmp_path_factory.mktemp("tied")
    swarm = Swarm.tiny(root, ["validator-0", "validator-1", "validator-state-forger"],
                       {"inner": {**FEW_STEPS, "steps": 4}, "quorum": 2, "data": {"validation_blocks": 16}})
    swarm.add("validator-0", Validator)
    swarm.add("validator-1", StateRecordLost)
    swarm.add("validator-state-forger", role_for("state-forger"))
    for i in range(3):
        swarm.add(f"miner-{i}", Miner)
    swarm.run(cycles=CYCLES)
    return swarm


def test_a_tie_on_the_state_adopts_nothing_crafted(tied):
    forged = metrics(tied, "validator-state-forger")
    assert all("published crafted state" in forged[c]["note"] for c in range(CYCLES))
    for cycle in range(CYCLES):
        hashes = {metrics(tied, n)[cycle]["state_hash"] for n in HONEST}
        assert len(hashes) == 1 and "" not in hashes, (cycle, hashes)
    first = metrics(tied, "validator-0")[0]
    assert first["agreed_hash"] == "" and "no quorum on the state" in first["note"], first["note"]
    assert tied.peers["validator-1"].me in first["state_silent"]
    second = metrics(tied, "validator-0")[1]
    assert second["state_hash"] in (second["agreed_hash"], "")
    v0 = tied.peers["validator-0"]  # with validator-1 back, 2 of 3 agree, and the forger is named
    vote = agree_on_state(v0.get(1, "state"), v0.manifest.validators, v0.manifest.quorum)
    assert vote.agreed == second["state_hash"] and vote.dissent == [tied.peers["validator-state-forger"].identity
                                                                     .public_key_str]
    assert second["target_loss"] < first["start_target_loss"] - 0.01  # it learned; zeroed experts would not
