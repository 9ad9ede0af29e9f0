"""The reduce rule: medians over allowlisted validators, quorum, top-k, and a liar that changes nothing."""

import torch

from swarm.protocol.consensus import Score, combine, ranking_record, reduce, scores_of
from teft.outer import OuterConfig, checkpoint_bytes, from_checkpoint
from teft.state import to_bytes

HONEST = {"m1": ("h1", 0.30), "m2": ("h2", 0.20), "m3": ("h3", 0.0), "bad": ("hb", 0.0)}


def _ranking(scores):
    return [Score(m, h, 1.0 - s, s) for m, (h, s) in scores.items()]


def test_median_and_top_k():
    rankings = {"v1": _ranking(HONEST), "v2": _ranking({**HONEST, "m1": ("h1", 0.10)})}
    d = combine(rankings, ["v1", "v2"], quorum=2, top_k=4)
    # m1's median is (0.3 + 0.1) / 2 = 0.2, tied with m2: the lower miner id goes first
    assert d.quorum_met and [(s.miner, round(s.score, 6)) for s in d.merged] == [("m1", 0.2), ("m2", 0.2)]
    assert [s.miner for s in combine(rankings, ["v1", "v2"], 2, top_k=1).merged] == ["m1"]


def test_liar_cannot_change_the_merged_set():
    inverted = {m: (h, 1.0 - s) for m, (h, s) in HONEST.items()}  # bad and m3 now look best
    honest_only = combine({"v1": _ranking(HONEST), "v2": _ranking(HONEST)}, ["v1", "v2"], 2, 4)
    with_liar = combine({"v1": _ranking(HONEST), "v2": _ranking(HONEST), "liar": _ranking(inverted)},
                        ["v1", "v2", "liar"], 2, 4)
    assert {s.miner for s in with_liar.merged} == {s.miner for s in honest_only.merged} == {"m1", "m2"}


def test_quorum_and_allowlist():
    rankings = {"v1": _ranking(HONEST), "stranger": _ranking(HONEST)}
    d = combine(rankings, ["v1", "v2"], quorum=2, top_k=4)
    assert not d.quorum_met and d.merged == [] and d.validators == ["v1"]
    # an unlisted key's ranking cannot even make up a quorum of one with a bad score
    d = combine({"stranger": _ranking({"bad": ("hb", 9.0)})}, ["v1"], quorum=1, top_k=4)
    assert not d.quorum_met


def test_one_submission_per_miner_and_per_payload():
    rankings = {"v1": [Score("m1", "h1", 0.5, 0.5), Score("m1", "h1b", 0.6, 0.4), Score("copy", "h1", 0.5, 0.5)]}
    d = combine(rankings, ["v1"], 1, 4)
    # identical bytes count once (the first in rank order), and m1 keeps only its other payload
    assert [(s.miner, s.payload_hash) for s in d.merged] == [("copy", "h1"), ("m1", "h1b")]


def test_nan_and_negative_scores_count_zero():
    d = combine({"v1": [Score("m", "h", 0.0, float("nan")), Score("n", "g", 0.0, -1.0)]}, ["v1"], 1, 4)
    assert d.merged == []


def test_checkpoint_round_trip_and_reduce():
    g = torch.Generator().manual_seed(0)
    base = {f"layers.0.experts.{e}.w": torch.randn(3, 2, generator=g) for e in range(3)}
    deltas = [{k: 0.1 * torch.randn(3, 2, generator=g) for k in base} for _ in range(2)]
    state, momentum = reduce(base, None, deltas, OuterConfig())
    data = checkpoint_bytes(state, momentum)
    back_state, back_momentum = from_checkpoint(data)
    assert to_bytes(back_state) == to_bytes(state) and to_bytes(back_momentum) == to_bytes(momentum)
    assert checkpoint_bytes(back_state, back_momentum) == data
    same, mom = reduce(base, None, [], OuterConfig())
    assert same is base and len(mom) == 0


def test_lucky_noise_below_the_relative_floor_is_not_merged():
    rankings = {"v1": [Score("honest", "h", 1.0, 0.17), Score("noise", "n", 1.2, 0.002)]}
    assert [s.miner for s in combine(rankings, ["v1"], 1, 4, min_relative=0.25).merged] == ["honest"]
    assert [s.miner for s in combine(rankings, ["v1"], 1, 4).merged] == ["honest", "noise"]


def test_score_survives_the_ranking_record():
    """One Score type from the validator's verdict through the signed record to the merge decision."""
    scores = [Score("m2", "b" * 64, 1.1, 0.1), Score("m1", "a" * 64, float("inf"), 0.0, "nan values"),
              Score("m3", "c" * 64, 1.0, 0.2)]
    back = scores_of(ranking_record(scores))
    assert [s.miner for s in back] == ["m3", "m2"]  # best first; zeros are not listed
    assert back[0].reason is None  # reasons stay local
    assert combine({"v": back}, ["v"], 1, 4).merged[0].payload_hash == "c" * 64


def test_ranking_size_does_not_grow_with_the_swarm():
    """A flood of submissions cannot push a ranking over the record cap: it lists at most MAX_RANKED."""
    from swarm.net.records import MAX_RANKED, make_value

    flood = [Score(f"Qm{i:044d}", f"{i:064x}", 1.0, 1.0 / (i + 1)) for i in range(500)]
    record = ranking_record(flood)
    assert len(record.entries) == MAX_RANKED and record.entries[0][0] == flood[0].miner
    make_value("r" * 16, 123456, "ranking", record)  # raises if over the 4 KB cap


def _states(votes: dict[str, str]) -> dict:
    from swarm.net.records import SignedRecord, StateRecord

    return {f"pid-{v}": SignedRecord(v, f"pid-{v}", StateRecord(state_hash=h * 64)) for v, h in votes.items()}


def test_the_state_needs_a_strict_quorum_and_no_tie_is_broken():
    from swarm.protocol.consensus import agree_on_state

    allow = ["v1", "v2", "v3"]
    tie = agree_on_state(_states({"v1": "b", "v3": "0"}), allow, quorum=2)  # "0..." would win a lowest-hash tie-break
    assert tie.agreed is None and tie.dissent == [] and tie.silent == ["v2"]
    too_few = agree_on_state(_states({"v1": "b"}), allow, quorum=2)
    assert too_few.agreed is None
    outvoted = agree_on_state(_states({"v1": "b", "v2": "b", "v3": "0", "stranger": "0"}), allow, quorum=2)
    assert outvoted.agreed == "b" * 64 and outvoted.dissent == ["v3"] and outvoted.silent == []
    strangers = agree_on_state(_states({"v1": "b", "s1": "0", "s2": "0", "s3": "0"}), allow, quorum=1)
    assert strangers.agreed == "b" * 64  # keys off the allowlist never vote


def test_a_quorum_the_silent_validators_could_still_tie_is_not_settled():
    from swarm.protocol.consensus import agree_on_state

    allow = ["v1", "v2", "v3", "v4"]
    early = agree_on_state(_states({"v1": "b", "v2": "b"}), allow, quorum=2)
    assert early.agreed == "b" * 64 and not early.settled  # v3 and v4 may still publish "0": a tie
    assert agree_on_state(_states({"v1": "b", "v2": "b", "v3": "0", "v4": "0"}), allow, quorum=2).agreed is None
    assert agree_on_state(_states({"v1": "b", "v2": "b", "v3": "b"}), allow, quorum=2).settled  # 3 > 0 + 1
    assert agree_on_state(_states({"v1": "b", "v2": "b", "v3": "0", "v4": "b"}), allow, quorum=2).settled
    assert agree_on_state(_states({"v1": "b", "v2": "b"}), allow[:3], quorum=2).settled  # 2 > 0 + 1
    assert not agree_on_state(_states({"v1": "b", "v2": "0"}), allow[:3], quorum=1).settled  # a tie: nothing


def test_the_step_bound_holds_for_the_worst_merges_and_is_not_loose():
    from swarm.protocol.consensus import step_bound

    cfg = OuterConfig(lr=1.0, momentum=0.5, nesterov=True)
    norm = 2.0
    key = "layers.0.experts.0.w"
    base = {key: torch.zeros(8)}
    state, momentum = base, None
    direction = torch.ones(8) / 8 ** 0.5  # every cycle the largest delta the norm bound lets through, one way
    for cycles in range(1, 6):
        state, momentum = reduce(state, momentum, [{key: norm * direction}], cfg)
        moved = float(state[key].norm())
        move, buffer = step_bound(cfg, norm, cycles)
        assert 0.7 * move <= moved <= move and float(momentum[key].norm()) <= buffer, (cycles, moved, move)


def test_the_agreed_checkpoints_pieces_root_needs_a_quorum_of_its_voters():
    """A peer checks each piece of the agreed checkpoint against the pieces root that a quorum of the validators
    who voted for it published; one validator's other root (or a stranger's) is not enough to be used."""
    from swarm.net.records import SignedRecord, StateRecord
    from swarm.protocol.consensus import agreed_root

    def rec(owner: str, state: str, root: str | None) -> SignedRecord:
        return SignedRecord(owner, f"pid-{owner}", StateRecord(state_hash=state * 64, pieces=root and root * 64))

    allow = ["v1", "v2", "v3"]
    records = {r.peer_id: r for r in (rec("v1", "a", "1"), rec("v2", "a", "1"), rec("v3", "a", "2"),
                                      rec("s1", "a", "2"), rec("s2", "a", "2"))}
    assert agreed_root(records, allow, "a" * 64, 2) == "1" * 64
    assert agreed_root(records, allow, "a" * 64, 3) is None  # 2 of the 3 voters: below this quorum
    assert agreed_root(records, allow, None, 2) is None
    split = {r.peer_id: r for r in (rec("v1", "a", "1"), rec("v2", "a", "2"), rec("v3", "a", None))}
    assert agreed_root(split, allow, "a" * 64, 2) is None  # whole fetch: checked by the agreed hash alone
