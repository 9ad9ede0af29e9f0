"""Target-expert state bytes, and the sparse inner loop that leaves everything else untouched."""

import pytest
import torch
from tiny_models import ARCHS, VOCAB, build

from teft.errors import TeftError
from teft.model import discover_layout
from teft.selection import ExpertMap
from teft.state import (
    atomic_write,
    check_state,
    check_state_layout,
    expected_shapes,
    expected_size,
    extract_state,
    from_bytes,
    load_state,
    load_state_file,
    parse_key,
    save_state,
    state_hash,
    to_bytes,
)
from teft.train import TrainConfig, lr_at, train_experts, trainable_experts


def _map(layout, per_layer=(1, 2)):
    return ExpertMap({m.layer: list(per_layer) for m in layout.layers}, layout.num_experts)


def _batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randint(0, VOCAB, (n, 16), generator=g)


@pytest.mark.parametrize("name", ARCHS)
def test_only_selected_slices_change(name):
    model = build(name)
    layout = discover_layout(model)
    emap = _map(layout)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    result = train_experts(model, layout, emap, _batches(), TrainConfig(steps=3, lr=1e-2))
    after = model.state_dict()
    selected_rows = 0
    for key, old in before.items():
        new = after[key]
        moe = next((m for m in layout.layers if key.startswith(m.experts + ".")), None)
        if moe is None:
            assert torch.equal(old, new), f"{key} (hub/router/shared) changed"
            continue
        if moe.fused:
            for e in range(moe.num_experts):
                same = torch.equal(old[e], new[e])
                assert same == (e not in emap.layers[moe.layer]), f"{key}[{e}]"
                selected_rows += not same
        else:
            e = int(key[len(moe.experts) + 1:].split(".")[0])
            assert torch.equal(old, new) == (e not in emap.layers[moe.layer]), key
    # the optimizer held state for the selected slices only: 2 moments x fp32 x trainable numel
    n_trainable = sum(layout.expert_numel(m) * len(emap.layers[m.layer]) for m in layout.layers)
    assert result.trainable_params == n_trainable
    assert result.optimizer_state_bytes == 2 * 4 * n_trainable
    assert flags == {k: p.requires_grad for k, p in model.named_parameters()}  # restored as they were
    assert not any(hasattr(m, "parametrizations") for m in model.modules())


def test_training_lowers_loss_on_its_data():
    model = build("qwen3_moe")
    layout = discover_layout(model)
    fixed = next(_batches(8, seed=3))
    result = train_experts(model, layout, _map(layout, (0, 1, 2, 3)), iter([fixed] * 15),
                           TrainConfig(steps=15, lr=3e-2))
    assert result.losses[-1] < result.losses[0] - 0.05


def test_exception_inside_restores_model():
    model = build("mixtral")
    layout = discover_layout(model)
    with pytest.raises(RuntimeError):
        with trainable_experts(model, layout, _map(layout)):
            raise RuntimeError("boom")
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())  # as built: trainable


def test_lr_schedule():
    cfg = TrainConfig(steps=10, lr=1.0, warmup_steps=2, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.5) and lr_at(1, cfg) == pytest.approx(1.0)
    assert lr_at(2, cfg) == pytest.approx(1.0) and lr_at(10, cfg) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["qwen2_moe", "gpt_oss", "per_expert"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_bytes_round_trip(name, dtype, tmp_path):
    model = build(name)
    layout = discover_layout(model)
    emap = _map(layout)
    state = extract_state(model, layout, emap, dtype=dtype)
    assert list(state) == list(expected_shapes(layout, emap))
    data = to_bytes(state, dtype)
    assert len(data) == expected_size(layout, emap, dtype)
    back = from_bytes(data)
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert to_bytes(back, dtype) == data  # canonical: re-encoding gives the same bytes
    digest = save_state(state, tmp_path / "s.safetensors", dtype)
    assert digest == state_hash(data) == state_hash((tmp_path / "s.safetensors").read_bytes())
    # insertion order does not matter
    shuffled = dict(reversed(list(state.items())))
    assert to_bytes(shuffled, dtype) == data
    loaded = load_state_file(tmp_path / "s.safetensors")
    assert check_state(loaded, layout, emap, dtype=dtype) is None


def test_load_state_in_place_and_checks():
    model = build("olmoe")
    layout = discover_layout(model)
    emap = _map(layout)
    state = extract_state(model, layout, emap)
    modified = {k: v + 1.0 for k, v in state.items()}
    load_state(model, layout, modified)
    again = extract_state(model, layout, emap)
    assert all(torch.equal(again[k], modified[k]) for k in state)
    key = next(iter(state))
    assert "non-finite" in check_state({**state, key: state[key] * float("nan")}, layout, emap)
    assert "shape" in check_state({**state, key: state[key][:1]}, layout, emap)
    assert "key set" in check_state({**state, "layers.0.experts.7.extra": state[key]}, layout, emap)
    assert "dtype" in check_state(state, layout, emap, dtype=torch.bfloat16)
    assert "norm" in check_state(modified, layout, emap, max_norm=1.0, reference=state)
    with pytest.raises(TeftError, match="another model"):
        load_state(model, layout, {key: torch.zeros(3)})
    with pytest.raises(TeftError, match="not a valid safetensors"):
        from_bytes(b"garbage")


@pytest.mark.parametrize("name", ["olmoe", "per_expert"])
def test_check_state_layout_refuses_what_the_model_cannot_take(name):
    model = build(name)
    layout = discover_layout(model)
    state = extract_state(model, layout, _map(layout))
    check_state_layout(state, layout)
    key = next(iter(state))
    layer, _, param = parse_key(key)
    bad = {
        "has shape": {key: torch.zeros(3, 3)},
        "non-finite": {key: state[key] * float("nan")},
        "names expert 99": {f"layers.{layer}.experts.99.{param}": state[key]},
        "no tensor 'nope'": {f"layers.{layer}.experts.0.nope": state[key]},
        "not an MoE layer": {f"layers.77.experts.0.{param}": state[key]},
        "no expert tensors": {},
    }
    for message, wrong in bad.items():
        with pytest.raises(TeftError, match=message):
            check_state_layout(wrong, layout)


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError):
        atomic_write(tmp_path / "out", b"data")  # renaming a file over a folder fails
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
