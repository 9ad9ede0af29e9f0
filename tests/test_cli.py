"""`python -m teft` end to end, as real subprocesses on a saved tiny checkpoint with a real tokenizer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import build
from transformers import AutoModelForCausalLM

from teft.data import make_byte_tokenizer

REPO = Path(__file__).resolve().parents[1]


def teft(*args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "teft", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tokenizer = make_byte_tokenizer()
    model = build("qwen2_moe", vocab_size=len(tokenizer))
    model.config.eos_token_id = model.config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def test_pipeline(ckpt):
    model, out = ckpt / "model", ckpt
    assert "routed experts  8 per layer, top-2" in teft("inspect", "--model", model).stdout
    sel = teft("select", "--model", model, "--data", "math", "--general-data", "general", "--method", "des",
               "--top-p", "0.5", "--tokens", "4000", "--block-size", "32", "--out", out / "map.json")
    emap = json.loads((out / "map.json").read_text())
    assert emap["method"] == "des" and emap["budget"] == {"top_p": 0.5} and emap["tokens"] == 4000
    assert len(emap["model_hash"]) == 64 and len(emap["data_digest"]) == 64 and emap["general_digest"]
    assert "selected" in sel.stdout
    tr = teft("train", "--model", model, "--expert-map", out / "map.json", "--data", "math", "--steps", "4",
              "--lr", "1e-2", "--block-size", "32", "--tokens", "8000", "--out", out / "state.safetensors")
    assert "sha256" in tr.stdout and (out / "state.safetensors").stat().st_size > 0
    ev = json.loads(teft("eval", "--model", model, "--state", out / "state.safetensors", "--data", "math",
                         "general", "--block-size", "32", "--max-blocks", "16", "--json").stdout)
    base = json.loads(teft("eval", "--model", model, "--data", "math", "--block-size", "32", "--max-blocks",
                           "16", "--json").stdout)
    assert set(ev) == {"math", "general"} and ev["math"]["loss"] < base["math"]["loss"]
    teft("merge", "--model", model, "--state", out / "state.safetensors", "--method", "wise", "--alpha", "0.5",
         "--out", out / "merged")
    AutoModelForCausalLM.from_pretrained(out / "merged")
    assert json.loads((out / "merged" / "teft_integration.json").read_text())["alpha"] == 0.5
    teft("anneal-router", "--model", out / "merged", "--data", "math", "general", "--steps", "2",
         "--block-size", "32", "--tokens", "4000", "--out", out / "annealed")
    assert (out / "annealed" / "config.json").exists()


@pytest.mark.parametrize("args, message", [
    (["inspect", "--model", "/nonexistent/model"], "does not exist"),
    (["eval", "--model", "MODEL", "--data", "/nonexistent.txt"], "does not exist"),
    (["select", "--model", "MODEL", "--data", "math", "--method", "des", "--top-k", "2", "--out", "x.json"],
     "--general-data"),
    (["train", "--model", "MODEL", "--expert-map", "/nonexistent.json", "--data", "math", "--steps", "1",
      "--out", "s.safetensors"], "expert map"),
])
def test_errors_are_one_line(ckpt, args, message):
    args = [str(ckpt / "model") if a == "MODEL" else a for a in args]
    proc = teft(*args, ok=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_map_for_another_model_is_refused(ckpt, tmp_path):
    emap = {"version": 1, "layers": {"0": [1]}, "num_experts": 8, "model_hash": "0" * 64}
    (tmp_path / "m.json").write_text(json.dumps(emap))
    proc = teft("train", "--model", ckpt / "model", "--expert-map", tmp_path / "m.json", "--data", "math",
                "--steps", "1", "--out", tmp_path / "s.safetensors", ok=False)
    assert proc.returncode == 2 and "made for model" in proc.stderr


def test_help_explains_every_flag():
    for command in ("inspect", "select", "train", "eval", "merge", "anneal-router"):
        text = teft(command, "--help").stdout
        for flag in ("--model", "--device"):
            assert flag in text
        assert "tiny" in text
