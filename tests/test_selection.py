"""Routing statistics and ESFT / DES-MoE selection."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import ARCHS, VOCAB, build

from teft.errors import TeftError
from teft.model import discover_layout
from teft.routing import RoutingProfile, routing_profile
from teft.selection import ExpertMap, select_experts


@pytest.mark.parametrize("name", ARCHS)
def test_counts_add_up(name):
    model = build(name)
    layout = discover_layout(model)
    blocks = torch.randint(0, VOCAB, (6, 12), generator=torch.Generator().manual_seed(1))
    profile = routing_profile(model, layout, blocks, batch_size=4)
    assert profile.tokens == 72
    # every token picks exactly top_k experts in every MoE layer
    assert torch.all(profile.counts.sum(dim=1) == 72 * layout.top_k)
    # normalised routing weights: one unit of gate mass per token per layer
    assert torch.allclose(profile.gate.sum(dim=1), torch.full((len(layout.layers),), 72.0, dtype=torch.float64))


def _profile(rows):
    counts = torch.tensor(rows, dtype=torch.float64)
    return RoutingProfile(list(range(len(rows))), counts, counts.clone(), int(counts[0].sum()))


def test_top_k_and_top_p_per_layer():
    p = _profile([[50, 30, 15, 5], [1, 1, 1, 97]])
    # layer 1: experts 0, 1, 2 tie; the lower id wins
    assert select_experts(p, "esft-token", top_k=2) == {0: [0, 1], 1: [0, 3]}
    # top-p normalises within each layer: layer 1 reaches 0.5 with one expert, layer 0 needs two
    assert select_experts(p, "esft-token", top_p=0.5) == {0: [0], 1: [3]}
    assert select_experts(p, "esft-token", top_p=0.6) == {0: [0, 1], 1: [3]}
    assert select_experts(p, "esft-token", top_p=1.0) == {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}


def test_des_removes_what_dominates_general():
    domain = _profile([[40, 40, 10, 10]])
    general = _profile([[80, 10, 5, 5]])
    assert select_experts(domain, "esft-token", top_k=1) == {0: [0]}
    assert select_experts(domain, "des", top_k=1, general=general) == {0: [1]}
    with pytest.raises(TeftError, match="general"):
        select_experts(domain, "des", top_k=1)


def test_budget_errors():
    p = _profile([[1, 2]])
    with pytest.raises(TeftError, match="exactly one budget"):
        select_experts(p, "esft-token")
    with pytest.raises(TeftError, match="top-p"):
        select_experts(p, "esft-token", top_p=1.5)
    with pytest.raises(TeftError, match="unknown selection method"):
        select_experts(p, "random", top_k=1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 1000), min_size=6, max_size=6), min_size=1, max_size=4),
       st.floats(0.05, 1.0))
def test_top_p_is_smallest_set_reaching_p(rows, p):
    profile = _profile(rows)
    chosen = select_experts(profile, "esft-token", top_p=p)
    share = profile.share("token")
    for row, layer in enumerate(profile.layers):
        picked = chosen[layer]
        total = float(share[row].sum())
        if total == 0:
            assert picked == []
            continue
        mass = float(share[row, picked].sum()) if picked else 0.0
        assert mass >= p * total - 1e-9
        if picked:  # dropping the weakest chosen expert falls short: the set is minimal
            weakest = min(picked, key=lambda e: float(share[row, e]))
            assert mass - float(share[row, weakest]) < p * total - 1e-12


def test_map_round_trip_and_checks(tmp_path):
    model = build("qwen3_moe")
    layout = discover_layout(model)
    emap = ExpertMap({0: [3, 1], 1: [2]}, 8, "esft-token", {"top_p": 0.2}, 100, "abc", "def")
    emap.save(tmp_path / "map.json")
    back = ExpertMap.load(tmp_path / "map.json")
    assert back.layers == {0: [1, 3], 1: [2]} and back.budget == {"top_p": 0.2} and back.model_hash == "abc"
    back.check_model(layout, "abc")
    with pytest.raises(TeftError, match="made for model"):
        back.check_model(layout, "xyz")
    with pytest.raises(TeftError, match="experts per layer"):
        ExpertMap({0: [1]}, 16).check_model(layout)
    with pytest.raises(TeftError, match="not MoE layers"):
        ExpertMap({5: [1]}, 8).check_model(layout)
    with pytest.raises(TeftError, match=r"selects experts \[8, 40\] in layer 1, but this model's experts are 0..7"):
        ExpertMap({0: [1], 1: [2, 8, 40]}, 8).check_model(layout)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TeftError, match="not a valid expert map"):
        ExpertMap.load(tmp_path / "bad.json")
    with pytest.raises(TeftError, match="does not exist"):
        ExpertMap.load(tmp_path / "missing.json")
