"""Light miners: the unselected experts frozen in int8 / 4 bits, never held at full precision."""

from __future__ import annotations

import weakref

import pytest
import torch
from tiny_models import ARCHS, VOCAB, build
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from teft.errors import TeftError
from teft.light import code_sizes, dequantize, lighten, load_light_model, quantize, resident_bytes
from teft.model import discover_layout, expert_tensor, load_model
from teft.selection import ExpertMap
from teft.state import extract_state, load_state
from teft.train import TrainConfig, lm_loss, train_experts

FUSED = [a for a in ARCHS if a != "per_expert"]


class StorageWatch(TorchDispatchMode):
    """Every floating tensor storage an op creates or returns: the largest, and the most bytes alive at once."""

    def __init__(self, min_bytes: int = 1 << 16):
        super().__init__()
        self.min_bytes, self.largest, self.peak = min_bytes, 0, 0
        self.alive: dict[int, tuple[weakref.ref, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta" or not t.is_floating_point():
                continue
            storage = t.untyped_storage()
            size = storage.nbytes()
            self.largest = max(self.largest, size)
            if size >= self.min_bytes:  # a storage's Python object lives as long as the storage does
                self.alive[storage.data_ptr()] = (weakref.ref(storage), size)
        self.alive = {k: v for k, v in self.alive.items() if v[0]() is not None}
        self.peak = max(self.peak, sum(size for _, size in self.alive.values()))
        return out


def _tiny_map() -> ExpertMap:
    from pathlib import Path

    return ExpertMap.load(Path(__file__).resolve().parents[1] / "configs" / "tiny-math.map.json")


def _background_bytes(layout, emap, itemsize: int) -> int:
    return sum((m.num_experts - len(emap.layers.get(m.layer, []))) * layout.expert_numel(m) * itemsize
               for m in layout.layers)


@pytest.mark.parametrize("background", ["4bit", "int8"])
def test_quantize_round_trip(background):
    torch.manual_seed(0)
    w = torch.randn(96, 160)
    codes, scales = quantize(w, background)
    code_bytes, scale_bytes = code_sizes(tuple(w.shape), background)
    assert codes.numel() * codes.element_size() == code_bytes and scales.numel() * 4 == scale_bytes
    back = dequantize(codes, scales, tuple(w.shape), torch.float32, background)
    rel = float((back - w).norm() / w.norm())
    assert rel < (0.1 if background == "4bit" else 0.01), rel  # NF4 of Gaussian weights in blocks of 64: 0.09
    if background == "4bit":  # the nearest of the 16 NF4 levels, scaled per block of 64: what the codes must mean
        import bitsandbytes.functional as bnbf

        levels = bnbf.get_4bit_type("nf4", device="cpu").float()
        blocks = w.reshape(-1, 64)
        absmax = blocks.abs().amax(1, keepdim=True)
        nearest = levels[(blocks / absmax).unsqueeze(-1).sub(levels).abs().argmin(-1)] * absmax
        assert torch.allclose(back, nearest.reshape(w.shape), atol=1e-6)
    assert code_bytes < w.numel() * (0.51 if background == "4bit" else 1.01)


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("background", ["4bit", "int8"])
def test_light_forward_close_to_full(name, background):
    """A light model computes what the full one does, up to the background's rounding; bf16 is the model itself."""
    model = build(name)
    layout = discover_layout(model)
    emap = ExpertMap({m.layer: [1, 5] for m in layout.layers}, layout.num_experts)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = lm_loss(model, ids).item()
        selected = extract_state(model, layout, emap)
        lighten(model, layout, emap, background)
        light = lm_loss(model, ids).item()
    assert abs(light - full) < (0.05 if background == "4bit" else 0.01) * abs(full), (full, light)
    relaid = discover_layout(model)  # the layout still names every expert, though only 2 per layer are held
    assert [m.num_experts for m in relaid.layers] == [m.num_experts for m in layout.layers]
    pairs = zip(selected.values(), extract_state(model, layout, emap).values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(TeftError, match="background"):
        expert_tensor(model, layout.layers[0], 0, layout.layers[0].params[0][0])


def test_light_rejects_other_map_and_per_expert_modules():
    model = build("qwen3_moe")
    layout = discover_layout(model)
    lighten(model, layout, ExpertMap({m.layer: [1, 5] for m in layout.layers}, layout.num_experts), "4bit")
    other = ExpertMap({m.layer: [2] for m in layout.layers}, layout.num_experts)
    with pytest.raises(TeftError, match="light model"):
        train_experts(model, layout, other, iter([torch.zeros(1, 8, dtype=torch.long)]), TrainConfig(steps=1))
    per = build("per_expert")
    per_layout = discover_layout(per)
    with pytest.raises(TeftError, match="fused expert tensors"):
        lighten(per, per_layout, ExpertMap({m.layer: [1] for m in per_layout.layers}, per_layout.num_experts),
                "int8")


def _batches(n: int, seed: int = 0, seq: int = 64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 257, (2, seq), generator=g) for _ in range(n)]


def test_light_load_never_holds_the_background():
    """Loading the embedded model light: besides what it keeps (hub, selected rows), at most two layers' fused expert
    tensors are alive at full precision at once (transformers builds one while the last is let go), never the
    whole background; what stays is the hub, the selected rows and codes. Loading it in full is the control."""
    emap = _tiny_map()
    with StorageWatch() as watch:
        model, _, layout = load_light_model("tiny", emap, "4bit")
    background = _background_bytes(layout, emap, 4)
    held = resident_bytes(model)
    layer = max(m.num_experts * layout.expert_numel(m) * 4 for m in layout.layers)
    assert watch.peak <= 2 * layer + held.frozen_full, (watch.peak, layer, held)
    assert watch.peak < background, (watch.peak, background)
    assert held.background < background / 6  # 4 bits + an fp32 absmax per 64 values, of fp32 weights
    assert not any(p.shape[0] == layout.num_experts for n, p in model.named_parameters() if ".experts." in n)
    with StorageWatch() as control:
        full, _ = load_model("tiny")
    assert control.peak >= background
    assert resident_bytes(full).total - held.frozen_full >= background
    ids = torch.randint(0, 257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # loading light is lightening the full model: the same numbers, close to the full's
        loaded = lm_loss(model, ids).item()
        whole = lm_loss(full, ids).item()
        assert lm_loss(lighten(full, layout, emap, "4bit"), ids).item() == pytest.approx(loaded, abs=1e-6)
    assert abs(loaded - whole) < 0.02 * whole, (loaded, whole)


def test_light_train_step_allocates_no_layer_of_background():
    """Forward and backward of a light miner: no storage as large as one layer's projection of the experts."""
    emap = _tiny_map()
    model, _, layout = load_light_model("tiny", emap, "4bit")
    moe = layout.layers[0]
    one_layer = moe.num_experts * min(n for _, n in [(p, torch.Size(s).numel()) for p, s in moe.params]) * 4
    with StorageWatch() as watch:
        result = train_experts(model, layout, emap, iter(_batches(2)), TrainConfig(steps=2, lr=1e-3))
    assert watch.largest < one_layer, (watch.largest, one_layer)
    assert result.trainable_params == emap.count * layout.expert_numel(moe)
    full, _ = load_model("tiny")
    with StorageWatch() as control:
        train_experts(full, layout, emap, iter(_batches(2)), TrainConfig(steps=1, lr=1e-3))
    assert control.largest >= one_layer  # the full model's experts forward reads views of the fused tensors


@pytest.fixture
def one_thread():
    """Two threads per process on a shared 2-core machine run these steps ten times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_light_update_gains_what_a_full_miner_gains(one_thread):
    """Same seed, same data: the light miner's update, scored on the full model, gains >= 0.97 of the full's."""
    from teft.data import iterate_batches, load_texts, tokenize_blocks
    from teft.pol import state_loss

    emap = _tiny_map()
    full, tokenizer = load_model("tiny")
    layout = discover_layout(full)
    train = tokenize_blocks(tokenizer, load_texts("math", "train", limit_bytes=400_000), 128)
    val = tokenize_blocks(tokenizer, load_texts("math", "validation", limit_bytes=200_000), 128)[:32]
    batches = [val[i:i + 8] for i in range(0, len(val), 8)]
    base = extract_state(full, layout, emap)
    cfg = TrainConfig(steps=20, lr=3e-3, warmup_steps=2, grad_clip=1.0, seed=0)
    full_state = train_experts(full, layout, emap, iterate_batches(train, 4, "s0", 20), cfg, init=base).state
    light, _, _ = load_light_model("tiny", emap, "4bit")
    light_state = train_experts(light, layout, emap, iterate_batches(train, 4, "s0", 20), cfg, init=base).state
    load_state(full, layout, base)
    l0 = state_loss(full, layout, base, batches)
    gain_full = l0 - state_loss(full, layout, full_state, batches)
    gain_light = l0 - state_loss(full, layout, light_state, batches)
    assert gain_full > 0.04  # 0.074 measured: a real gain, not noise
    assert gain_light >= 0.97 * gain_full, (gain_light, gain_full)


def _tiny_raw(tmp_path) -> dict:
    import yaml

    from swarm.net.identity import load_or_create

    raw = yaml.safe_load((_tiny_map_path().parent / "tiny.yaml").read_text())
    raw["validators"], raw["quorum"] = [load_or_create(tmp_path / "v.key").public_key_str], 1
    return raw


def _tiny_map_path():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "configs" / "tiny-math.map.json"


def test_manifest_background_field(tmp_path):
    from swarm.errors import SwarmError
    from swarm.protocol.manifest import canonical_json, from_dict, run_id

    raw = _tiny_raw(tmp_path)
    plain = from_dict(raw)
    assert plain.inner.background == "bf16" and b"background" not in canonical_json(plain)  # run ids unchanged
    raw["inner"]["background"] = "4bit"
    light = from_dict(raw)
    assert light.inner.background == "4bit" and run_id(light) != run_id(plain)
    raw["inner"]["background"] = "3bit"
    with pytest.raises(SwarmError, match="inner.background"):
        from_dict(raw)
    raw["inner"]["background"] = "4bit"
    raw["inner"]["optimizer"] = "adamw8bit"
    assert from_dict(raw).inner.optimizer == "adamw8bit" and run_id(from_dict(raw)) != run_id(light)
    raw["inner"]["optimizer"] = "adam"
    with pytest.raises(SwarmError, match="inner.optimizer"):
        from_dict(raw)
    raw["inner"]["optimizer"] = "adamw"
    assert run_id(from_dict(raw)) == run_id(light)  # the default leaves the run id as it was
    raw["inner"]["background"] = "int8"
    raw["expert_map"] = {"spec": {"method": "esft-token", "top_p": 0.2, "data": "math"}}
    with pytest.raises(SwarmError, match="needs expert_map.path"):
        from_dict(raw)


def test_runtime_loads_a_light_miner_with_the_full_models_state(tmp_path):
    from swarm.errors import SwarmError
    from swarm.launch import write_manifest
    from swarm.protocol.manifest import load
    from swarm.protocol.runtime import load_runtime
    from teft.light import light_of
    from teft.model import get_module

    raw = _tiny_raw(tmp_path)
    manifest = load(write_manifest(_tiny_map_path().parent / "tiny.yaml", tmp_path / "run.yaml", raw["validators"],
                                   0.0, {"quorum": 1, "data": {"train_tokens": 20000, "validation_tokens": 20000}}))
    full = load_runtime(manifest)
    light = load_runtime(manifest, background="4bit")
    assert all(light_of(get_module(light.model, m.experts)) is not None for m in light.layout.layers)
    assert all(light_of(get_module(full.model, m.experts)) is None for m in full.layout.layers)
    assert light.layout.num_experts == full.layout.num_experts and light.payload_size == full.payload_size
    pairs = zip(full.initial_state.values(), light.initial_state.values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    manifest.expert_map.path, manifest.expert_map.spec = None, {"method": "esft-token", "top_p": 0.2, "data": "math"}
    with pytest.raises(SwarmError, match="needs the manifest's expert_map.path"):
        load_runtime(manifest, background="int8")


def test_light_and_full_miners_merged_in_one_swarm(tmp_path):
    """A validator scores on the full model; a light miner and a full miner of one run are both merged."""
    from swarm_double import FEW_STEPS, Swarm

    from swarm.roles.miner import Miner
    from swarm.roles.validator import Validator
    from teft.light import light_of
    from teft.model import get_module

    # no merge floor: which batches each miner draws follows from its fresh key, and 4 steps on unlucky ones
    # gained 0.0027 against the other's 0.019, under the floor of a quarter of the best (not a light-miner matter);
    # 8 steps and 16 blocks: 4 steps on 8 blocks once scored 0.0 against 0.0076 with the suite's other worker busy
    swarm = Swarm.tiny(tmp_path, ["validator"], {"inner": {**FEW_STEPS, "steps": 8}, "quorum": 1,
                                                 "outer": {"min_relative_score": 0.0},
                                                 "data": {"validation_blocks": 16, "private_validation": False}})
    validator = swarm.add("validator", Validator)
    full = swarm.add("full", Miner)
    light = swarm.add("light", Miner, background="4bit")
    layer = light.rt.layout.layers[0]
    assert light_of(get_module(light.rt.model, layer.experts)) is not None
    assert light_of(get_module(validator.rt.model, layer.experts)) is None
    swarm.run(cycles=1)
    row = swarm.rows("validator", 1)[0]
    assert set(row["merged"]) == {full.me, light.me}, row
    # both gained (the two train on different batches, so their gains differ by data: the like-for-like
    # comparison, same seed and data, is test_light_update_gains_what_a_full_miner_gains)
    assert row["scores"][light.me] > 0 and row["scores"][full.me] > 0, row["scores"]


def test_teft_train_with_a_light_background(tmp_path, capsys):
    """`teft train --background 4bit` writes a state of the map's experts and says what the model held."""
    import json

    from teft.__main__ import main
    from teft.state import load_state_file

    args = ["train", "--model", "tiny", "--expert-map", str(_tiny_map_path()), "--data", "math", "--steps", "2",
            "--block-size", "32", "--tokens", "4000", "--threads", "1", "--json"]
    assert main([*args, "--background", "4bit", "--out", str(tmp_path / "light.safetensors")]) == 0
    light = json.loads(capsys.readouterr().out)
    assert main([*args, "--out", str(tmp_path / "full.safetensors")]) == 0
    full = json.loads(capsys.readouterr().out)
    assert light["background"] == "4bit" and full["background"] == "bf16"
    assert light["model_bytes"]["background"] > 0 and full["model_bytes"]["background"] == 0
    held = {k: sum(v.values()) for k, v in (("light", light["model_bytes"]), ("full", full["model_bytes"]))}
    assert held["light"] < 0.4 * held["full"]
    a, b = load_state_file(tmp_path / "light.safetensors"), load_state_file(tmp_path / "full.safetensors")
    assert list(a) == list(b) and all(torch.allclose(a[k], b[k], atol=5e-3) for k in a)
    assert main([*args, "--background", "2bit", "--out", str(tmp_path / "x.safetensors")]) == 2


def test_pack_is_the_same_bytes_from_two_processes(tmp_path):
    """`teft pack` in two processes: one file, the same name (its hash) and bytes; it holds the light model."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from teft.files import content_hash
    from teft.pack import read_pack

    repo = Path(__file__).resolve().parents[1]
    outs, procs = [], []
    for run in ("a", "b"):  # both at once: two processes, whatever their order
        cmd = [sys.executable, "-m", "teft", "pack", "--model", "tiny", "--expert-map", str(_tiny_map_path()),
               "--background", "4bit", "--threads", "1", "--out", str(tmp_path / run), "--json"]
        procs.append(subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        outs.append(json.loads(out))
    a, b = (Path(o["out"]).read_bytes() for o in outs)
    assert a == b and outs[0]["sha256"] == outs[1]["sha256"] == content_hash(a)
    assert Path(outs[0]["out"]).name == f"{content_hash(a)}.teftpack"
    tensors, meta = read_pack(a)
    emap = _tiny_map()
    model, _, layout = load_light_model("tiny", emap, "4bit")
    held = dict(model.named_parameters())
    held.update((n, b) for n, b in model.named_buffers() if "_teft_" in n)
    assert all(torch.equal(tensors[n], t) for n, t in held.items())
    assert not any(t.shape[0] == layout.num_experts for n, t in tensors.items() if ".experts." in n)
    assert meta["background"] == "4bit" and json.loads(meta["config"])["model_type"] == "deepseek_v3"
    assert "tokenizer.json" in meta["files"] and json.loads(meta["expert_map"])["layers"]
    assert len(a) < 0.4 * (repo / "teft/assets/tiny-moe/model.safetensors").stat().st_size
    with pytest.raises(TeftError, match="not a miner pack"):
        read_pack(b"\x08" + a[1:200])


def test_a_pack_alone_loads_the_light_model(tmp_path):
    """From the pack's bytes only: the same light model (same loss, bit for bit) and nothing of full size."""
    from teft.pack import build_pack, load_pack

    emap = _tiny_map()
    data = build_pack("tiny", emap, "4bit")
    with StorageWatch() as watch:
        model, tokenizer, layout, packed_map = load_pack(data)
    light, _, _ = load_light_model("tiny", emap, "4bit")
    moe = layout.layers[0]
    one_layer = moe.num_experts * min(torch.Size(s).numel() for _, s in moe.params) * 4
    assert watch.largest < one_layer
    assert packed_map.layers == emap.layers and tokenizer is not None and tokenizer("2+2=4")["input_ids"]
    ids = torch.randint(0, 257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert lm_loss(model, ids).item() == lm_loss(light, ids).item()
    result = train_experts(model, layout, emap, iter(_batches(1)), TrainConfig(steps=1, lr=1e-3))
    assert result.trainable_params == emap.count * layout.expert_numel(moe)


def test_the_peer_refuses_a_background_for_a_validator(tmp_path, capsys):
    """Validators always score on the full model: --background is refused for them before anything loads."""
    from swarm import peer
    from swarm.launch import write_manifest

    raw = _tiny_raw(tmp_path)
    path = write_manifest(_tiny_map_path().parent / "tiny.yaml", tmp_path / "run.yaml", raw["validators"], 0.0,
                          {"quorum": 1, "data": {"private_validation": False}})
    code = peer.main(["--role", "validator", "--config", str(path), "--identity", str(tmp_path / "keys" / "k"),
                      "--workdir", str(tmp_path / "w"), "--background", "4bit"])
    assert code == 2 and "--background is for miners" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_adamw8bit_trains_like_adamw_with_a_quarter_of_the_moments(one_thread):
    """bitsandbytes' 8-bit moments: nearly the same update, a quarter of the optimizer bytes, and the moments a
    call returns (fp32, the same keys) resume the next call as the fp32 ones do."""
    emap = _tiny_map()
    model, _, layout = load_light_model("tiny", emap, "4bit")
    base = extract_state(model, layout, emap)
    runs = {}
    for optimizer in ("adamw", "adamw8bit"):
        cfg = TrainConfig(steps=4, lr=3e-3, grad_clip=1.0, seed=0, optimizer=optimizer)
        runs[optimizer] = train_experts(model, layout, emap, iter(_batches(4)), cfg, init=base)
    full, small = runs["adamw"], runs["adamw8bit"]
    assert small.optimizer_state_bytes < 0.27 * full.optimizer_state_bytes
    assert set(small.moments) == set(full.moments)
    delta = {k: full.state[k] - base[k] for k in base}
    err = sum(float((small.state[k] - base[k] - d).norm() ** 2) for k, d in delta.items()) ** 0.5
    assert err < 0.1 * sum(float(d.norm() ** 2) for d in delta.values()) ** 0.5
    cfg = TrainConfig(steps=1, lr=3e-3, seed=1, optimizer="adamw8bit")
    again = train_experts(model, layout, emap, iter(_batches(1, seed=5)), cfg, init=small.state,
                          moments=small.moments)
    key = next(k for k in again.moments if k.endswith(".step"))
    assert float(again.moments[key]) == float(small.moments[key]) + 1
    from teft.train import _get_moments, _make_optimizer, _set_moments

    m = next(k for k in small.moments if k.endswith(".exp_avg_sq"))
    first, second = small.moments[m.replace("_sq", "")], small.moments[m]
    p = torch.nn.Parameter(torch.zeros_like(first))
    optimizer = _make_optimizer([p], cfg)
    _set_moments(optimizer, p, first, second, 7.0)  # into 8-bit codes and back: within the codes' rounding
    back = _get_moments(optimizer, p)
    assert optimizer.state[p]["state2"].dtype == torch.uint8 and back[2] == 7.0
    for old, new in zip((first, second), back[:2], strict=True):
        assert float((new - old).norm()) < 0.03 * float(old.norm())


def test_simulate_makes_light_miners(tmp_path, capsys):
    """`python -m swarm.simulate --light-miners N`: the last N honest miners run `swarm.peer --background 4bit`."""
    from swarm.sim.simulate import Swarm, main

    swarm = Swarm(tmp_path / "run")
    full, light = swarm.add("miner-0", "miner"), swarm.add("miner-1-light", "miner", background="4bit")
    assert "--background" not in swarm.command(full)
    cmd = swarm.command(light)
    assert cmd[cmd.index("--background") + 1] == "4bit"
    swarm.pack = tmp_path / "p.teftpack"  # the run pins a pack: the validators serve it, the light miners fetch it
    validator = swarm.add("validator-0", "validator")
    assert swarm.command(validator)[swarm.command(validator).index("--pack") + 1] == str(swarm.pack)
    assert "--pack" not in swarm.command(light) and "--pack" not in swarm.command(full)
    assert main(["--miners", "2", "--light-miners", "3", "--out", str(tmp_path / "x")]) == 2
    assert "--light-miners 3 must be from 0 to --miners (2)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _pinned_run(tmp_path, data: bytes):
    """A run of tiny.yaml that pins this pack (as `swarm.launch --pack` writes it)."""
    from swarm.launch import pack_spec, write_manifest
    from swarm.protocol.manifest import load
    from teft.pack import write_pack

    raw = _tiny_raw(tmp_path)
    path = write_pack(data, tmp_path / "packs")
    return load(write_manifest(_tiny_map_path().parent / "tiny.yaml", tmp_path / "run.yaml", raw["validators"], 0.0,
                               {"quorum": 1, "pack": pack_spec(data),
                                "data": {"train_tokens": 20000, "validation_tokens": 20000}})), path


def test_a_light_miner_loads_the_runs_pack_without_the_base_model(tmp_path):
    """A run pins its pack by hash; a light miner's runtime from the pack alone starts from the same Phi_0 as one
    loaded from the base model, and a pack that is not the pinned one is refused in one line."""
    from swarm.errors import SwarmError
    from swarm.protocol.manifest import canonical_json, from_dict
    from swarm.protocol.runtime import check_pack, load_runtime
    from teft.pack import build_pack

    assert b'"pack"' not in canonical_json(from_dict(_tiny_raw(tmp_path)))  # run ids without a pack unchanged
    data = build_pack("tiny", _tiny_map(), "4bit")
    manifest, _ = _pinned_run(tmp_path, data)
    assert (manifest.pack.bytes, manifest.pack.background) == (len(data), "4bit")
    base = load_runtime(manifest, background="4bit")
    manifest.base_model.path = str(tmp_path / "no-such-model")  # the pack is all a light miner reads
    with pytest.raises(SwarmError):
        load_runtime(manifest, background="4bit")
    packed = load_runtime(manifest, background="4bit", pack=data)
    pairs = zip(base.initial_state.items(), packed.initial_state.items(), strict=True)
    assert all(a == b and torch.equal(x, y) for (a, x), (b, y) in pairs)
    assert packed.payload_size == base.payload_size and torch.equal(packed.train_blocks, base.train_blocks)
    with pytest.raises(SwarmError, match="is not the one this run pins"):
        check_pack(manifest, data[:-1] + bytes([data[-1] ^ 1]))
    manifest.pack.background = "int8"
    with pytest.raises(SwarmError, match="another expert map or background"):
        check_pack(manifest, data)


def test_the_peer_and_launch_refuse_a_pack_that_is_not_the_runs(tmp_path, capsys):
    from swarm import launch, peer
    from teft.pack import build_pack

    data = build_pack("tiny", _tiny_map(), "4bit")
    manifest, path = _pinned_run(tmp_path, data)
    other = tmp_path / "other.teftpack"
    other.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    code = peer.main(["--role", "miner", "--config", str(manifest._source), "--identity", str(tmp_path / "k"),
                      "--workdir", str(tmp_path / "w"), "--pack", str(other)])
    assert code == 2 and "is not the one this run pins" in capsys.readouterr().err and not (tmp_path / "w").exists()
    bad = tmp_path / "bad.teftpack"
    bad.write_bytes(b"not a pack at all")
    assert launch.main(["--validators", str(tmp_path / "v.key"), "--quorum", "1", "--out", str(tmp_path / "r2.yaml"),
                        "--pack", str(bad)]) == 2
    assert "not a miner pack" in capsys.readouterr().err and not (tmp_path / "r2.yaml").exists()
