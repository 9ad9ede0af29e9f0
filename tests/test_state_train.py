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


def test_time_up_ends_training_early_with_what_it_trained():
    """A miner on a slow machine submits the steps it managed before the commit deadline, not nothing."""
    model = build("qwen3_moe")
    layout = discover_layout(model)
    emap = _map(layout)
    asked = []
    result = train_experts(model, layout, emap, _batches(), TrainConfig(steps=10, lr=1e-2),
                           time_up=lambda: asked.append(1) or len(asked) >= 3)
    assert result.steps_done == 3 and len(result.losses) == 3 and len(asked) == 3  # never asked before step 1
    full = train_experts(build("qwen3_moe"), layout, emap, _batches(), TrainConfig(steps=10, lr=1e-2))
    assert full.steps_done == 10
    assert any(not torch.equal(result.state[k], full.state[k]) for k in full.state)


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


def test_lr_schedule_spans_the_run():
    """Cycles of 10 steps on a 30-step horizon: one warmup, one cosine; the floor after the horizon."""
    run = TrainConfig(steps=10, lr=1.0, warmup_steps=2, min_lr_ratio=0.1, total_steps=30)
    lrs = [lr_at(step, run) for step in range(35)]
    assert lrs[:2] == pytest.approx([0.5, 1.0]) and lrs[10] < 1.0 and lrs[10] > lrs[20] > lrs[29]
    assert lrs[30:] == pytest.approx([0.1] * 5)  # past the horizon the lr stays at its floor
    assert lr_at(16, run) == pytest.approx(0.55)  # cosine midpoint of steps 2..30
    assert lr_at(10, TrainConfig(steps=10, lr=1.0, warmup_steps=2)) == pytest.approx(0.1)  # default: per call


def _train_chunk(model, layout, emap, start, steps, moments, total):
    """One cycle of a miner: `steps` batches from global step `start` of a `total`-step schedule."""
    cfg = TrainConfig(steps=steps, lr=1e-2, warmup_steps=1, seed=start, step_offset=start, total_steps=total)
    batches = (next(_batches(4, seed=start + i)) for i in range(steps))
    return train_experts(model, layout, emap, batches, cfg, moments=moments)


@pytest.mark.parametrize("name", ["qwen3_moe", "per_expert"])
def test_moments_and_schedule_survive_a_restart(name):
    """A miner killed after cycle 1 that reloads its saved state and moments sends the same bytes in cycle 2 as
    one that never stopped, and as one 6-step run: the moments are matched back to the right rows."""
    model = build(name)
    layout = discover_layout(model)
    emap = _map(layout, (0, 2))
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    first = _train_chunk(model, layout, emap, 0, 3, None, 6)
    with trainable_experts(model, layout, emap) as params:
        groups = params.param_keys()
    keys = [k for group in groups for k in ([group] if isinstance(group, str) else group)]
    assert sorted(keys) == sorted(expected_shapes(layout, emap))
    assert set(first.moments) == {f"{k}.{f}" for k in keys for f in ("exp_avg", "exp_avg_sq", "step")}
    saved_state, saved_moments = to_bytes(extract_state(model, layout, emap)), to_bytes(first.moments)
    _train_chunk(model, layout, emap, 3, 3, first.moments, 6)
    never_stopped = to_bytes(extract_state(model, layout, emap))

    restarted = build(name)
    restarted.load_state_dict(initial)
    load_state(restarted, layout, from_bytes(saved_state))
    again = _train_chunk(restarted, layout, emap, 3, 3, from_bytes(saved_moments), 6)
    assert to_bytes(extract_state(restarted, layout, emap)) == never_stopped
    assert float(again.moments[f"{keys[0]}.step"]) == 6.0

    fresh = build(name)  # forgetting the moments changes the update, so the comparison above could fail
    fresh.load_state_dict(initial)
    load_state(fresh, layout, from_bytes(saved_state))
    _train_chunk(fresh, layout, emap, 3, 3, None, 6)
    assert to_bytes(extract_state(fresh, layout, emap)) != never_stopped

    whole = build(name)  # one uninterrupted 6-step run (same batches, same global schedule)
    whole.load_state_dict(initial)
    cfg = TrainConfig(steps=6, lr=1e-2, warmup_steps=1, seed=0, total_steps=6)
    batches = [next(_batches(4, seed=i)) for i in range(6)]
    train_experts(whole, layout, emap, iter(batches), cfg)
    assert torch.allclose(extract_state(whole, layout, emap)[keys[0]],
                          from_bytes(never_stopped)[keys[0]], atol=1e-6)

    with pytest.raises(TeftError, match="another expert map"):
        _train_chunk(fresh, layout, _map(layout, (1, 3)), 6, 1, first.moments, 6)


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
