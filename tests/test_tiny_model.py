"""The shipped default model: loads with plain transformers, matches its pretraining report, routes by domain."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from teft.analysis import specialization, token_routes
from teft.data import load_texts, subset, tokenize_blocks
from teft.model import discover_layout, model_hash, resolve_model_path
from teft.pol import mean_loss

DOMAINS = ("general", "code", "legal", "math")


@pytest.fixture(scope="module")
def tiny():
    path = resolve_model_path("tiny")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    full = {d: tokenize_blocks(tokenizer, load_texts(d, "validation"), 128) for d in DOMAINS}
    blocks = {d: subset(full[d], 0, 64) for d in DOMAINS}
    return model, tokenizer, blocks, full


def test_loads_with_plain_transformers_and_is_pinned(tiny):
    model, tokenizer, *_ = tiny
    assert tokenizer.decode(tokenizer("def f(x): return 1/2").input_ids) == "def f(x): return 1/2"
    layout = discover_layout(model)
    assert layout.layers[0].shared and layout.num_experts >= 16  # fine-grained routed experts + a shared hub
    pinned = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text())
    assert pinned["base_model"]["sha256"] == model_hash("tiny")
    size = sum(p.stat().st_size for p in resolve_model_path("tiny").iterdir())
    assert size < 30e6


def test_weights_match_the_pretraining_report_and_math_is_least_seen(tiny):
    model, _, _, full = tiny
    report = json.loads((resolve_model_path("tiny") / "pretrain_report.json").read_text())
    for d in DOMAINS:  # the report was measured on the first 64 validation blocks of each domain
        loss = mean_loss(model, [full[d][i:i + 8] for i in range(0, 64, 8)])
        assert abs(loss - report[f"val_loss_{d}"]) < 2e-3, (d, loss, report[f"val_loss_{d}"])
        assert math.exp(loss) < 6.0, (d, loss)  # far from the 257-way uniform guess on every domain
    mix = report["domains"]
    assert min(mix, key=mix.get) == "math" and mix["math"] <= 0.1, mix  # under-trained on the target domain


def test_routing_specializes_beyond_a_random_control(tiny):
    model, _, blocks, _ = tiny
    layout = discover_layout(model)
    torch.manual_seed(0)
    control = AutoModelForCausalLM.from_config(model.config).eval()
    reports = {}
    for name, m in (("trained", model), ("control", control)):
        routes = {d: token_routes(m, layout, blocks[d]) for d in DOMAINS}
        reports[name] = specialization({d: r[0] for d, r in routes.items()}, {d: r[1] for d, r in routes.items()},
                                       layout, target="math", top_p=0.2)
    trained, ctrl = reports["trained"], reports["control"]
    share = lambda r: sum(r["target_set_share"]["general"]) / len(r["layers"])  # noqa: E731
    assert share(trained) < share(ctrl), json.dumps({"trained": share(trained), "control": share(ctrl)})
    assert trained["domain_accuracy"] > ctrl["domain_accuracy"] + 0.01  # ~6 standard errors at this size
    # per-layer balance: no dead experts on the pretraining domains
    for d in ("general", "code"):
        assert min(trained["min_expert_share"][d]) > 0.0
