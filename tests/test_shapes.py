"""Real-model manifests against real shapes: each configs/*.yaml that names a shape under configs/shapes/ is
checked on a meta-device model of that architecture (no weights), as a peer would discover it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from swarm.errors import SwarmError
from swarm.protocol.shapes import CONFIGS, check
from teft.selection import ExpertMap
from teft.state import DTYPES, expected_size

NAMED = sorted(p for p in CONFIGS.glob("*.yaml") if (yaml.safe_load(p.read_text()) or {}).get("shape")
               and (CONFIGS / "shapes" / f"{yaml.safe_load(p.read_text())['shape']}.json").exists())


def test_the_real_model_manifests_name_their_shapes(tmp_path):
    from swarm.net.identity import load_or_create
    from swarm.protocol.manifest import canonical_json, from_dict

    assert {p.stem for p in NAMED} >= {"olmoe-1b-7b", "qwen3-30b-a3b", "deepseek-v2-lite", "mixtral-8x7b"}
    key = load_or_create(tmp_path / "v.key").public_key_str
    for path in NAMED:
        raw = yaml.safe_load(path.read_text())
        raw["validators"], raw["quorum"] = [key], 1
        assert from_dict(raw, str(path)).shape == path.stem
        assert b'"shape":"' + path.stem.encode() in canonical_json(from_dict(raw))  # part of the run id
        del raw["shape"]
        assert b'"shape"' not in canonical_json(from_dict(raw))  # run ids of manifests without one are unchanged


@pytest.mark.parametrize("path", NAMED, ids=lambda p: p.stem)
def test_budget_payload_and_dtype_fit_the_shape(path):
    r = check(path)
    layout, dtype = r["layout"], DTYPES[r["payload_dtype"]]
    assert r["moe_layers"] == len(layout.layers) and r["selected_max"] < r["experts"] * r["moe_layers"]
    assert r["payload_dtype"] == "bfloat16"  # every shape's checkpoint is bf16, and so are its payloads
    # the bytes follow from the layout exactly: teft's own size of a one-expert payload is that expert's
    # tensors plus a header of a few hundred bytes (checked where one expert is small enough to materialise)
    one_expert = r["expert_params"] * dtype.itemsize
    if one_expert <= 64 << 20:
        first = layout.layers[0].layer
        size = expected_size(layout, ExpertMap({first: [0]}, r["experts"]), dtype)
        assert one_expert < size <= one_expert + 4096, (size, one_expert)
    assert r["payload_bytes_max"] == r["selected_max"] * one_expert
    # each codec's payload (teft.codec): the numbers end to end after a 16-byte header, or fewer bytes
    codecs = r["codec_bytes_max"]
    assert codecs["bf16"] == r["payload_bytes_max"] + 16 and codecs["fp32"] == 2 * r["payload_bytes_max"] + 16
    assert codecs["fp32"] / codecs["sparse k=64/4096 2-bit"] > 100 and codecs["int8/256"] < codecs["bf16"]
    if "top_p" in r["budget"]:
        assert r["experts_per_layer_max"] == math.ceil(r["budget"]["top_p"] * r["experts"])
    print(f"{path.stem}: at most {r['payload_bytes_max']:,d} payload bytes per miner")


def test_a_budget_the_shape_cannot_hold_is_refused(tmp_path):
    raw = yaml.safe_load((CONFIGS / "mixtral-8x7b.yaml").read_text())
    raw["expert_map"]["spec"]["top_k"] = 8  # all 8 experts of every layer: that is full fine-tuning of experts
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(SwarmError, match="top_k 8 must be from 1 to 7"):
        check(bad)
    raw["expert_map"]["spec"]["top_k"], raw["payload_dtype"] = 2, "float32"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(SwarmError, match="payload_dtype float32 differs from the model's bfloat16"):
        check(bad)


def test_the_meta_model_holds_no_memory():
    from swarm.protocol.shapes import meta_model

    model = meta_model("mixtral-8x7b")
    assert all(p.device == torch.device("meta") for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) > 46e9  # Mixtral-8x7B: 46.7 B parameters
    assert Path(CONFIGS / "shapes" / "mixtral-8x7b.json").exists()


def test_the_command_helps_instead_of_running(capsys, tmp_path):
    from swarm.protocol.shapes import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith("usage: python -m swarm.protocol.shapes")
    assert "| manifest |" not in out  # it printed help, it did not run
    assert main([str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: manifest") and err.count("\n") == 1


@pytest.mark.parametrize("path", NAMED, ids=lambda p: p.stem)
def test_miner_bytes_per_background(path):
    from swarm.protocol.shapes import miner_bytes

    r = check(path)
    full, int8, nf4 = (miner_bytes(r, b) for b in ("bf16", "int8", "4bit"))
    assert full["frozen"] == r["layout"].param_counts["total"] * 2  # every weight in bf16
    assert nf4["frozen"] < int8["frozen"] < full["frozen"]
    assert all(full[k] == nf4[k] == 4 * r["selected_max"] * r["expert_params"] for k in ("masters", "gradients"))
    assert set(nf4["fits_gb"]) >= set(full["fits_gb"])
    small = miner_bytes(r, "4bit", "adamw8bit")
    assert small["frozen"] == nf4["frozen"] and 0.25 < small["moments"] / nf4["moments"] < 0.26
    if path.stem == "qwen3-30b-a3b":  # the case: a full miner does not fit one 80 GB GPU, a 4-bit one does
        assert 80 not in full["fits_gb"] and 80 in nf4["fits_gb"]
        assert 0.35 < nf4["frozen"] / full["frozen"] < 0.4 and 0.55 < int8["frozen"] / full["frozen"] < 0.6


def test_miner_bytes_match_what_a_light_model_holds():
    """The estimate's frozen bytes for the embedded model and its map are what teft.light's model really holds:
    its parameters (hub and selected experts, fp32 here) plus the background's codes and scales."""
    from swarm.protocol.shapes import miner_bytes
    from teft.light import load_light_model, resident_bytes
    from teft.model import discover_layout, load_model

    emap = ExpertMap.load(CONFIGS / "tiny-math.map.json")
    full, _ = load_model("tiny")
    layout = discover_layout(full)
    r = {"layout": layout, "model_dtype": "float32", "selected_max": emap.count, "experts": layout.num_experts,
         "moe_layers": len(layout.layers), "expert_params": layout.expert_numel(layout.layers[0])}
    for background in ("bf16", "int8", "4bit"):
        model = full if background == "bf16" else load_light_model("tiny", emap, background)[0]
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        assert miner_bytes(r, background)["frozen"] == params + resident_bytes(model).background, background
