"""Real scale on CPU: no fused-size allocation per step, bf16 models, fp32 masters, chunked loss, checkpointing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from tiny_models import ARCHS, VOCAB, build
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import AutoModelForCausalLM

import teft.train
from teft.__main__ import main
from teft.data import load_texts, make_byte_tokenizer, tokenize_blocks
from teft.errors import TeftError
from teft.model import discover_layout, load_model
from teft.pol import state_loss
from teft.routing import routing_profile
from teft.selection import ExpertMap, select_experts
from teft.state import expected_shapes, extract_state, load_state, load_state_file, save_state
from teft.train import TrainConfig, lm_loss, train_experts, trainable_experts


def _map(layout, per_layer=(1, 2)):
    return ExpertMap({m.layer: list(per_layer) for m in layout.layers}, layout.num_experts)


def _build(name, dtype=torch.float32):
    torch.manual_seed(0)  # per_expert draws its weights from the global generator
    return build(name).to(dtype)


def _fixed(n=8, t=16, seed=3):
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


class _NewStorage(TorchDispatchMode):
    """Records the size in elements of every tensor an op allocates (views and in-place ops excluded)."""

    def __init__(self):
        super().__init__()
        self.sizes: list[tuple[int, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.sizes.append((t.untyped_storage().nbytes() // t.element_size(), str(func)))
        return out


@pytest.mark.parametrize("impl", ["grouped_mm", "eager"])
def test_train_step_allocates_nothing_fused_sized(impl):
    config = transformers.Qwen3MoeConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, head_dim=8, vocab_size=VOCAB, intermediate_size=48,
                                         moe_intermediate_size=64, num_experts=32, num_experts_per_tok=2,
                                         max_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, experts_implementation=impl)
    layout = discover_layout(model)
    smallest = min(getattr(model.get_submodule(m.experts), n).numel() for m in layout.layers for n, _ in m.params)
    batch = _fixed(1, 8)
    used = ExpertMap(select_experts(routing_profile(model, layout, batch), "esft-token", top_k=2), layout.num_experts)
    with trainable_experts(model, layout, used) as params:
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        model.train()
        with _NewStorage() as record:
            loss = lm_loss(model, batch)
            loss.backward()
            optimizer.step()
    largest = max(record.sizes)
    assert largest[0] < smallest / 4, f"{largest[1]} allocated {largest[0]} elements; a fused tensor has {smallest}"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


@pytest.mark.parametrize("name", ARCHS)
def test_chunked_loss_matches_the_models_own(name, monkeypatch):
    model = build(name)
    monkeypatch.setattr(teft.train, "_LOSS_CHUNK_ELEMENTS", VOCAB * 5)  # 5 rows a chunk: many chunks
    batch = _fixed(3, 12)
    mask = torch.ones_like(batch)
    mask[0, 8:] = 0
    embed = model.get_input_embeddings().weight
    embed.requires_grad_(True)
    labels = batch.masked_fill(mask == 0, -100)
    reference = model(input_ids=batch, attention_mask=mask, labels=labels, use_cache=False).loss
    (want,) = torch.autograd.grad(reference, embed)
    loss = lm_loss(model, batch, mask)
    (got,) = torch.autograd.grad(loss, embed)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_training():
    losses = []
    for enabled in (False, True):
        model = build("qwen3_moe")
        layout = discover_layout(model)
        result = train_experts(model, layout, _map(layout), iter([_fixed()] * 4),
                               TrainConfig(steps=4, lr=1e-2, gradient_checkpointing=enabled))
        losses.append(result.losses)
        assert not model.is_activation_checkpointing  # switched off again
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    model = build("per_expert")
    with pytest.raises(TeftError, match="gradient checkpointing"):
        train_experts(model, discover_layout(model), _map(discover_layout(model)), iter([_fixed()]),
                      TrainConfig(steps=1, gradient_checkpointing=True))


@pytest.mark.parametrize("name", ["qwen3_moe", "olmoe", "gpt_oss", "deepseek_v3"])
def test_bf16_training_lowers_loss_like_fp32(name):
    drops = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = build(name).to(dtype)
        layout = discover_layout(model)
        emap = _map(layout, (0, 1, 2, 3))
        result = train_experts(model, layout, emap, iter([_fixed()] * 15), TrainConfig(steps=15, lr=3e-2))
        drops[dtype] = result.losses[0] - result.losses[-1]
        assert all(p.dtype == dtype for p in model.parameters())  # the frozen model is never upcast
        n = sum(layout.expert_numel(m) * 4 for m in layout.layers)
        assert result.trainable_params == n and result.optimizer_state_bytes == 2 * 4 * n  # fp32 masters
    assert drops[torch.bfloat16] > 1.0
    assert drops[torch.bfloat16] == pytest.approx(drops[torch.float32], rel=0.1)


@pytest.mark.parametrize("name", ["qwen2_moe", "gpt_oss", "per_expert"])
def test_fp32_masters_round_trip_into_a_bf16_model(name, tmp_path):
    layout = discover_layout(_build(name))
    emap = _map(layout)
    base = extract_state(_build(name), layout, emap)  # an fp32 state, finer than bf16
    model = _build(name, torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_experts(model, layout, emap, iter([_fixed()] * 3), TrainConfig(steps=3, lr=1e-3), init=base)
    save_state(result.state, tmp_path / "s.safetensors")
    state = load_state_file(tmp_path / "s.safetensors")
    assert list(state) == list(expected_shapes(layout, emap))
    assert all(v.dtype == torch.float32 for v in state.values())
    assert any(not torch.equal(v, v.bfloat16().float()) for v in state.values())  # masters kept fp32 precision
    fresh = _build(name, torch.bfloat16)
    load_state(fresh, layout, state)
    after = model.state_dict()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, after[key]), key  # the trained model is exactly the state file, cast
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(any(k.startswith(m.experts + ".") for m in layout.layers) for k in changed)


def test_bf16_and_fp32_rank_alike_on_the_tiny_model():
    m32, tokenizer = load_model("tiny")
    m16, _ = load_model("tiny", dtype="bfloat16")
    assert next(m32.parameters()).dtype == torch.float32 and next(m16.parameters()).dtype == torch.bfloat16
    layout = discover_layout(m32)
    train = tokenize_blocks(tokenizer, load_texts("math", "train"), 64, max_tokens=64 * 96)
    valid = tokenize_blocks(tokenizer, load_texts("math", "validation"), 64, max_tokens=64 * 16)
    selections = [select_experts(routing_profile(m, layout, train[:32]), "esft-token", top_p=0.2) for m in (m32, m16)]
    assert selections[0] == selections[1]
    emap = ExpertMap(selections[0], layout.num_experts)
    base = extract_state(m32, layout, emap)
    candidates = {"base": base}
    for steps, lr in ((4, 1e-3), (12, 3e-3), (12, 3e-2)):
        load_state(m32, layout, base)
        batches = iter([train[i * 8:(i + 1) * 8] for i in range(steps)])
        candidates[f"{steps}@{lr}"] = train_experts(m32, layout, emap, batches, TrainConfig(steps=steps, lr=lr)).state
    load_state(m32, layout, base)
    noise = torch.Generator().manual_seed(0)
    candidates["noise"] = {k: v + 0.02 * torch.randn(v.shape, generator=noise) for k, v in base.items()}
    batches = [valid[i:i + 8] for i in range(0, len(valid), 8)]
    rankings = []
    for model in (m32, m16):
        losses = {name: state_loss(model, layout, state, batches) for name, state in candidates.items()}
        rankings.append(sorted(losses, key=losses.get))
    assert rankings[0] == rankings[1]
    assert rankings[0][0] != "base" and rankings[0][-1] != "base"  # a real spread to rank


def test_load_model_dtype(tmp_path):
    tokenizer = make_byte_tokenizer()
    build("olmoe", vocab_size=len(tokenizer)).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    tokenizer.save_pretrained(tmp_path / "bf16")
    assert next(load_model(tmp_path / "bf16")[0].parameters()).dtype == torch.bfloat16  # auto: its own
    assert next(load_model(tmp_path / "bf16", dtype="float32")[0].parameters()).dtype == torch.float32
    assert next(load_model("tiny")[0].parameters()).dtype == torch.float32  # the embedded model stays fp32
    with pytest.raises(TeftError, match="unknown dtype"):
        load_model("tiny", dtype="float8")


def test_cli_trains_a_bf16_model_with_checkpointing(tmp_path, capsys):
    tokenizer = make_byte_tokenizer()
    build("qwen2_moe", vocab_size=len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    common = ["--model", str(tmp_path / "model"), "--device", "cpu", "--block-size", "32", "--tokens", "4000"]
    assert main(["select", *common, "--dtype", "bfloat16", "--data", "math", "--top-k", "2",
                 "--out", str(tmp_path / "map.json")]) == 0
    assert main(["train", *common, "--dtype", "bfloat16", "--gradient-checkpointing", "--expert-map",
                 str(tmp_path / "map.json"), "--data", "math", "--steps", "2", "--lr", "1e-3",
                 "--out", str(tmp_path / "s.safetensors")]) == 0
    state = load_state_file(tmp_path / "s.safetensors")
    emap = ExpertMap.load(tmp_path / "map.json")
    assert list(state) == list(expected_shapes(discover_layout(build("qwen2_moe", vocab_size=len(tokenizer))), emap))
    assert main(["eval", *common, "--dtype", "bfloat16", "--data", "math", "--max-blocks", "4",
                 "--state", str(tmp_path / "s.safetensors")]) == 0
    assert "perplexity" in capsys.readouterr().out


def test_bench_gpu_runs_on_cpu_with_the_tiny_shape(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu.py"
    proc = subprocess.run([sys.executable, str(script), "--shape", "tiny", "--quick", "--device", "cpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "tiny.json").read_text())
    for batch in ("1", "2"):
        assert report["teft"][batch]["time_s"] > 0 and report["teft"][batch]["time_vs_floor"] > 0
        assert report["floor"][batch]["tokens_per_s"] > 0
    assert report["routing"]["tokens_per_s"] > 0 and report["pol"]["time_s"] > 0
    assert 0 < report["payload_bytes"]["bfloat16"] < report["load"]["bytes"]
    assert "time_s" in report["full_finetune_batch1"]
    assert "| train step, batch 2 x 64 |" in (tmp_path / "tiny.md").read_text()
    # the floor is the cheapest correct step: TEFT holds everything it holds and more (CPU: the profiler's peak)
    for batch in ("1", "2"):
        assert report["teft"][batch]["peak_bytes"] >= report["floor"][batch]["peak_bytes"] > report["load"]["bytes"]
    # the steps train on blocks the map was routed on: the selected experts get their share of the routing
    share = report["routed_share"]
    assert abs(share["train_batch"]["2"] - share["map"]) < 0.05 < share["map"]
    full = report["full_finetune_batch1"]
    assert full["bytes_per_param"] == 8 and "bfloat16 gradients and moments" in full["optimizer"]


def test_bench_floor_is_the_chunked_loss_step_without_weight_gradients(monkeypatch):
    """The bench's floor computes the TEFT step's own loss (teft's chunked loss, the value lm_loss gives) and
    leaves no weight gradient anywhere; its share helper counts the routed pairs the map's experts take."""
    import importlib.util

    import teft.train as train
    from teft.routing import RoutingProfile
    from teft.selection import ExpertMap
    from teft.train import lm_loss

    spec = importlib.util.spec_from_file_location("bench_gpu", Path(__file__).resolve().parents[1] / "scripts"
                                                  / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = bench.build(bench.shape_config("tiny", layers=1), "cpu", torch.float32)
    assert model.config.num_hidden_layers == 1
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    losses, original = [], train.chunked_cross_entropy

    def spy(head, hidden, labels):
        losses.append(original(head, hidden, labels))
        return losses[-1]

    monkeypatch.setattr(train, "chunked_cross_entropy", spy)
    bench.floor_step(model, ids)()()
    assert [float(x) for x in losses] == [pytest.approx(float(lm_loss(model, ids)), abs=1e-5)]
    assert all(p.grad is None for p in model.parameters())
    profile = RoutingProfile([0, 1], torch.tensor([[6.0, 2.0, 2.0], [1.0, 1.0, 8.0]], dtype=torch.float64),
                             torch.zeros(2, 3, dtype=torch.float64), 10)
    assert bench.selected_share(profile, ExpertMap({0: [0], 1: [0, 1]}, 3)) == pytest.approx((0.6 + 0.2) / 2)
