"""Specialization measures: they separate different routing and not identical routing."""

import torch
from tiny_models import build

from teft.analysis import domain_accuracy, js_divergence, specialization, token_routes
from teft.model import discover_layout


def test_js_divergence_bounds():
    p = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    q = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    assert abs(js_divergence(p, q) - 1.0) < 1e-9
    assert js_divergence(p + 1, p + 1) == 0.0


def test_specialization_separates_disjoint_token_sets():
    model = build("qwen3_moe")
    layout = discover_layout(model)
    g = torch.Generator().manual_seed(0)
    low = torch.randint(1, 20, (96, 16), generator=g)  # two "domains" on disjoint token ranges
    high = torch.randint(40, 64, (96, 16), generator=g)
    same = torch.randint(1, 20, (96, 16), generator=g)  # a third with the same distribution as `low`
    routes = {"low": token_routes(model, layout, low), "high": token_routes(model, layout, high),
              "same": token_routes(model, layout, same)}
    report = specialization({k: v[0] for k, v in routes.items()}, {k: v[1] for k, v in routes.items()},
                            layout, target="low", top_p=0.5)
    jsd = report["jsd_bits"]
    assert all(a > b for a, b in zip(jsd["low|high"], jsd["low|same"], strict=True))
    share = report["target_set_share"]
    assert all(s >= 0.5 for s in share["low"]) and all(h < s for h, s in zip(share["high"], share["same"], strict=True))
    two = {"low": routes["low"][1], "high": routes["high"][1]}
    acc, per_layer = domain_accuracy(two, layout.num_experts, per_domain=700)
    assert acc > 0.62 and len(per_layer) == 2
    indistinct = {"low": routes["low"][1], "same": routes["same"][1]}
    acc_same, _ = domain_accuracy(indistinct, layout.num_experts, per_domain=700)
    assert acc_same < acc - 0.08
