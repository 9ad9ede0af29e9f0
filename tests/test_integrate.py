"""Integration into a full checkpoint that plain transformers loads and generates from."""

import pytest
import torch
from tiny_models import VOCAB, build
from transformers import AutoModelForCausalLM

from teft.errors import TeftError
from teft.integrate import anneal_routers, apply_state, save_checkpoint, wise
from teft.model import discover_layout
from teft.selection import ExpertMap
from teft.state import extract_state
from teft.train import TrainConfig


def _state_plus(model, layout, emap, value):
    return {k: v + value for k, v in extract_state(model, layout, emap).items()}


@pytest.mark.parametrize("name", ["qwen2_moe", "deepseek_v3"])
def test_replace_and_wise_save_loadable_checkpoint(name, tmp_path):
    model = build(name)
    layout = discover_layout(model)
    emap = ExpertMap({m.layer: [0, 5] for m in layout.layers}, layout.num_experts)
    original = extract_state(model, layout, emap)
    trained = _state_plus(model, layout, emap, 1.0)
    apply_state(model, layout, trained, "wise", alpha=0.25)
    now = extract_state(model, layout, emap)
    for k in now:
        assert torch.allclose(now[k], original[k] + 0.25, atol=1e-6)
    out = save_checkpoint(model, None, tmp_path / "ckpt", {"method": "wise"})
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    ids = torch.randint(0, VOCAB, (1, 4))
    gen = loaded.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 9)
    apply_state(model, layout, trained, "replace")
    assert all(torch.equal(v, trained[k]) for k, v in extract_state(model, layout, emap).items())
    with pytest.raises(TeftError, match="not empty"):
        save_checkpoint(model, None, out)


def test_wise_alpha_bounds():
    with pytest.raises(TeftError):
        wise({}, {}, 1.5)


def test_router_annealing_touches_only_routers():
    model = build("olmoe")
    layout = discover_layout(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    batches = iter([torch.randint(0, VOCAB, (4, 16), generator=g) for _ in range(4)])
    anneal_routers(model, layout, batches, TrainConfig(steps=4, lr=1e-2))
    routers = {m.router + ".weight" for m in layout.layers}
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v) != (k in routers), k


def test_failed_save_leaves_no_temp_folder(tmp_path):
    model = build("qwen3_moe")

    class Broken:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, Broken(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
