"""Layout discovery on tiny random models of every supported architecture."""

import pytest
import torch
from tiny_models import ARCHS, MOE_LAYERS, SHARED, build

from teft.errors import TeftError
from teft.model import describe, discover_layout, expert_tensor, resolve_model_path


@pytest.mark.parametrize("name", ARCHS)
def test_layout_found(name):
    model = build(name)
    layout = discover_layout(model)
    assert layout.top_k == 2
    expected_layers = MOE_LAYERS.get(name, [0, 1])
    assert [m.layer for m in layout.layers] == expected_layers
    moe = layout.layers[0]
    assert moe.fused == (name != "per_expert")
    assert moe.num_experts == layout.num_experts == (4 if name == "per_expert" else 8)
    assert bool(moe.shared) == (name in SHARED)
    router = model.get_submodule(moe.router)
    assert router.weight.shape[0] == moe.num_experts
    # per-expert views are real slices of the model's tensors
    for param, shape in moe.params:
        view = expert_tensor(model, moe, 1, param)
        assert tuple(view.shape) == shape
    counts = layout.param_counts
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["routed_experts"] == sum(layout.expert_numel(m) * m.num_experts for m in layout.layers)
    assert counts["hub"] > 0 and (counts["shared_experts"] > 0) == (name in SHARED)
    assert "routed experts" in describe(layout)


def test_dense_model_is_refused():
    from transformers import AutoModelForCausalLM, Qwen3Config

    cfg = Qwen3Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=32, head_dim=8)
    with pytest.raises(TeftError, match="no MoE layers"):
        discover_layout(AutoModelForCausalLM.from_config(cfg))


def test_bad_model_paths(tmp_path):
    with pytest.raises(TeftError, match="does not exist"):
        resolve_model_path(tmp_path / "nope")
    with pytest.raises(TeftError, match="config.json"):
        resolve_model_path(tmp_path)


def test_expert_view_writes_through():
    model = build("qwen3_moe")
    moe = discover_layout(model).layers[0]
    with torch.no_grad():
        expert_tensor(model, moe, 3, "down_proj").fill_(7.0)
    assert torch.all(model.get_submodule(moe.experts).down_proj[3] == 7.0)
    assert not torch.all(model.get_submodule(moe.experts).down_proj[2] == 7.0)


def test_vision_language_checkpoint_loads_its_text_tower(tmp_path):
    from teft.model import load_model

    build("qwen3_vl_moe").save_pretrained(tmp_path / "vl")
    model, _ = load_model(tmp_path / "vl")
    layout = discover_layout(model)
    assert "language_model" in layout.layers[0].experts and layout.num_experts == 8
