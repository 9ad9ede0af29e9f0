"""`python -m teft` on a saved tiny checkpoint with a real tokenizer, run in-process through main(argv)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import build
from transformers import AutoModelForCausalLM

from teft import model as teft_model
from teft.__main__ import main
from teft.data import make_byte_tokenizer
from teft.state import load_state_file, save_state

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--block-size", "32", "--tokens", "4000", "--threads", "1"]


def teft(capsys, *args, ok=True):
    """(exit code, stdout, stderr) of one command."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    if ok:
        assert code == 0, err[-3000:]
    return code, out, err


def one_line_error(code, err, message):
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err[-2000:]
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tokenizer = make_byte_tokenizer()
    model = build("qwen2_moe", vocab_size=len(tokenizer))
    model.config.eos_token_id = model.config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "map.json").write_text(json.dumps({"version": 1, "layers": {"0": [1, 2], "1": [3]}, "num_experts": 8}))
    return root


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if the command loads the model: the error must come before any work."""
    def refuse(*_, **__):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(teft_model, "load_model", refuse)


def test_pipeline_json(ckpt, capsys):
    model, out = ckpt / "model", ckpt
    _, stdout, _ = teft(capsys, "inspect", "--model", model, "--json", "--threads", "1")
    assert json.loads(stdout)["num_experts"] == 8
    _, stdout, err = teft(capsys, "inspect", "--model", model, "--data", "math", "general", "--json", *SMALL)
    report = json.loads(stdout)
    assert report["num_experts"] == 8 and set(report["specialization"]["trained"]["domains"]) == {"math", "general"}
    assert "routed experts" in err  # the table went to stderr

    _, stdout, err = teft(capsys, "select", "--model", model, "--data", "math", "--general-data", "general",
                          "--method", "des", "--top-p", "0.5", *SMALL, "--out", out / "map-des.json", "--json")
    sel = json.loads(stdout)
    emap = json.loads((out / "map-des.json").read_text())
    assert sel["tokens"] == emap["tokens"] == 4000 and sel["selected"] == sum(map(len, emap["layers"].values()))
    assert emap["method"] == "des" and emap["budget"] == {"top_p": 0.5} and len(emap["model_hash"]) == 64
    assert "routing domain" in err

    _, stdout, _ = teft(capsys, "train", "--model", model, "--expert-map", out / "map-des.json", "--data", "math",
                        "--steps", "4", "--lr", "1e-2", *SMALL, "--out", out / "state.safetensors", "--json")
    tr = json.loads(stdout)
    assert len(tr["sha256"]) == 64 and (out / "state.safetensors").stat().st_size > 0
    losses, k = tr["losses"], tr["loss"]["window"]
    assert len(losses) == 4 and k == 2 and "first 2 vs the last 2" in tr["loss"]["measure"]
    assert tr["loss"]["first"] == pytest.approx(sum(losses[:2]) / 2)
    assert tr["loss"]["last"] == pytest.approx(sum(losses[2:]) / 2)

    _, stdout, err = teft(capsys, "eval", "--model", model, "--state", out / "state.safetensors", "--data", "math",
                          "general", "--max-blocks", "16", *SMALL, "--json")
    ev = json.loads(stdout)
    assert "eval math" in err  # a progress bar, on stderr
    _, stdout, _ = teft(capsys, "eval", "--model", model, "--data", "math", "--max-blocks", "16", *SMALL, "--json")
    base = json.loads(stdout)
    assert set(ev) == {"math", "general"} and ev["math"]["loss"] < base["math"]["loss"]

    _, stdout, _ = teft(capsys, "merge", "--model", model, "--state", out / "state.safetensors", "--method", "wise",
                        "--alpha", "0.5", "--threads", "1", "--out", out / "merged", "--json")
    assert json.loads(stdout) == {"out": str(out / "merged"), "method": "wise", "alpha": 0.5,
                                  "tensors": len(load_state_file(out / "state.safetensors"))}
    AutoModelForCausalLM.from_pretrained(out / "merged")
    assert json.loads((out / "merged" / "teft_integration.json").read_text())["alpha"] == 0.5

    _, stdout, _ = teft(capsys, "anneal-router", "--model", out / "merged", "--data", "math", "general", "--steps",
                        "2", *SMALL, "--out", out / "annealed", "--json")
    an = json.loads(stdout)
    assert set(an["eval"]) == {"math", "general"} and all(e["blocks"] == 16 for e in an["eval"].values())
    assert (out / "annealed" / "config.json").exists()


def test_anneal_compares_the_same_blocks(ckpt, capsys, tmp_path):
    """With a learning rate too small to move the routers, before and after must agree per dataset."""
    _, stdout, err = teft(capsys, "anneal-router", "--model", ckpt / "model", "--data", "math", "general", "--steps",
                          "2", "--lr", "1e-12", *SMALL, "--out", tmp_path / "a", "--json")
    evals = json.loads(stdout)["eval"]
    for e in evals.values():
        assert e["after"] == pytest.approx(e["before"], abs=1e-5)
    assert evals["math"]["before"] != pytest.approx(evals["general"]["before"], abs=1e-3)
    assert "same held-out blocks" in err


def test_inspect_json_pipes_into_json_tool(ckpt):
    """The real process: stdout is one JSON document even with tables and progress bars on."""
    teft_proc = subprocess.run([sys.executable, "-m", "teft", "inspect", "--model", ckpt / "model", "--data", "math",
                                *SMALL, "--json"], cwd=REPO, capture_output=True, timeout=300)
    assert teft_proc.returncode == 0, teft_proc.stderr[-2000:]
    tool = subprocess.run([sys.executable, "-m", "json.tool"], input=teft_proc.stdout, capture_output=True,
                          timeout=60)
    assert tool.returncode == 0 and json.loads(tool.stdout)["num_experts"] == 8


def test_steps_zero_is_refused_and_writes_nothing(ckpt, capsys, tmp_path, no_load):
    code, _, err = teft(capsys, "train", "--model", ckpt / "model", "--expert-map", ckpt / "map.json", "--data",
                        "math", "--steps", "0", *SMALL, "--out", tmp_path / "s.safetensors", ok=False)
    one_line_error(code, err, "--steps: must be >= 1, got 0")
    assert list(tmp_path.iterdir()) == []


def test_out_naming_a_folder_is_refused_before_training(ckpt, capsys, tmp_path, no_load):
    (tmp_path / "outdir").mkdir()
    code, _, err = teft(capsys, "train", "--model", ckpt / "model", "--expert-map", ckpt / "map.json", "--data",
                        "math", "--steps", "2", *SMALL, "--out", tmp_path / "outdir", ok=False)
    one_line_error(code, err, "is a folder")
    assert [p.name for p in tmp_path.iterdir()] == ["outdir"] and not any((tmp_path / "outdir").iterdir())


def test_existing_out_is_kept_unless_forced(ckpt, capsys, tmp_path):
    out = tmp_path / "s.safetensors"
    out.write_bytes(b"mine")
    args = ["train", "--model", ckpt / "model", "--expert-map", ckpt / "map.json", "--data", "math", "--steps", "1",
            *SMALL, "--out", out]
    code, _, err = teft(capsys, *args, ok=False)
    one_line_error(code, err, "--force")
    assert out.read_bytes() == b"mine"
    teft(capsys, *args, "--force")
    assert out.read_bytes() != b"mine" and sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


def test_top_p_out_of_range_is_refused_before_routing(ckpt, capsys, tmp_path, no_load):
    code, _, err = teft(capsys, "select", "--model", ckpt / "model", "--data", "math", "--top-p", "1.5", *SMALL,
                        "--out", tmp_path / "m.json", ok=False)
    one_line_error(code, err, "--top-p/--top_p: must be in (0, 1], got 1.5")


def test_map_naming_a_missing_expert_is_refused(ckpt, capsys, tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"version": 1, "layers": {"0": [1, 40]}, "num_experts": 8}))
    code, _, err = teft(capsys, "train", "--model", ckpt / "model", "--expert-map", tmp_path / "m.json", "--data",
                        "math", "--steps", "1", *SMALL, "--out", tmp_path / "s.safetensors", ok=False)
    one_line_error(code, err, "selects experts [40] in layer 0")
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_wrong_shape_state_is_refused_by_merge(ckpt, capsys, tmp_path):
    save_state({"layers.0.experts.1.down_proj": torch.zeros(3, 3)}, tmp_path / "bad.safetensors")
    code, _, err = teft(capsys, "merge", "--model", ckpt / "model", "--state", tmp_path / "bad.safetensors",
                        "--method", "wise", "--alpha", "0.5", "--out", tmp_path / "merged", ok=False)
    one_line_error(code, err, "has shape [3, 3]")
    assert [p.name for p in tmp_path.iterdir()] == ["bad.safetensors"]


@pytest.mark.parametrize("value, message", [("-1e-3", "--lr: must be > 0, got -1e-3"),
                                            ("-0.5", "--lr: must be > 0, got -0.5"),
                                            ("0", "--lr: must be > 0, got 0"),
                                            ("nan", "--lr: must be > 0, got nan")])
def test_negative_lr_is_read_as_a_value_and_refused(ckpt, capsys, tmp_path, no_load, value, message):
    code, _, err = teft(capsys, "train", "--model", ckpt / "model", "--expert-map", ckpt / "map.json", "--data",
                        "math", "--steps", "1", "--lr", value, "--out", tmp_path / "s.safetensors", ok=False)
    one_line_error(code, err, message)


@pytest.mark.parametrize("args, message", [
    (["inspect", "--model", "/nonexistent/model"], "does not exist"),
    (["eval", "--model", "MODEL", "--data", "/nonexistent.txt", "--block-size", "32"], "does not exist"),
    (["select", "--model", "MODEL", "--data", "math", "--method", "des", "--top-k", "2", "--out", "x.json"],
     "--general-data"),
    (["select", "--model", "MODEL", "--data", "math", "--general-data", "general", "--top-k", "2", "--out", "x.json"],
     "only by --method des"),
    (["train", "--model", "MODEL", "--expert-map", "/nonexistent.json", "--data", "math", "--steps", "1",
      "--block-size", "32", "--out", "s.safetensors"], "expert map"),
    (["train", "--model", "MODEL", "--expert-map", "MAP", "--data", "math", "--steps", "1", "--tokens", "10",
      "--block-size", "32", "--out", "s.safetensors"], "less than one block"),
    (["eval", "--model", "MODEL", "--data", "math", "--block-size", "100"], "longer than the model's 64 positions"),
    (["eval", "--model", "MODEL", "--data", "math", "--split", "dev", "--block-size", "32"], "no split 'dev'"),
    (["eval", "--model", "MODEL", "--data", "math", "--state", "/nonexistent.safetensors", "--block-size", "32"],
     "does not exist"),
    (["merge", "--model", "MODEL", "--state", "/nonexistent.safetensors", "--alpha", "0.5", "--out", "m"],
     "--method wise only"),
    (["merge", "--model", "MODEL", "--state", "/nonexistent.safetensors", "--out", "MAP/m"], "is a file, not a folder"),
    (["inspect", "--model", "MODEL", "--threads", "0"], "--threads: must be >= 1"),
    (["inspect", "--model", "MODEL", "--device", "gpu"], "expected cpu, cuda"),
])
def test_errors_are_one_line(ckpt, capsys, tmp_path, no_load, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    args = [str(ckpt / "model") if a == "MODEL" else a.replace("MAP", str(ckpt / "map.json")) for a in args]
    code, out, err = teft(capsys, *args, ok=False)
    one_line_error(code, err, message)
    assert out == "" and list(tmp_path.iterdir()) == []


def test_map_for_another_model_is_refused(ckpt, capsys, tmp_path):
    emap = {"version": 1, "layers": {"0": [1]}, "num_experts": 8, "model_hash": "0" * 64}
    (tmp_path / "m.json").write_text(json.dumps(emap))
    code, _, err = teft(capsys, "train", "--model", ckpt / "model", "--expert-map", tmp_path / "m.json", "--data",
                        "math", "--steps", "1", *SMALL, "--out", tmp_path / "s.safetensors", ok=False)
    one_line_error(code, err, "made for model")


def test_threads_are_applied(ckpt, capsys):
    before = torch.get_num_threads()
    try:
        teft(capsys, "inspect", "--model", ckpt / "model", "--threads", "1")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


COMMANDS = ("inspect", "select", "train", "eval", "merge", "anneal-router")


def test_help_lists_only_each_commands_flags(capsys):
    for command in COMMANDS:
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        for flag in ("--model", "--device", "--threads", "--json", "tiny"):
            assert flag in text, (command, flag)
    assert main(["merge", "--help"]) == 0
    merge_help = capsys.readouterr().out
    for unused in ("--block-size", "--batch-size", "--tokens", "--seed", "--force"):
        assert unused not in merge_help
    assert main(["select", "--help"]) == 0
    select_help = " ".join(capsys.readouterr().out.split())  # help wraps to the terminal's width
    assert "default 131,072" in select_help and "--seed" not in select_help
    assert f"{len(os.sched_getaffinity(0))} here" in select_help


def test_version(capsys):
    from teft import version

    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"python -m teft {version()}" and version()[0].isdigit()


def test_token_cap_reads_only_what_it_needs_and_gives_the_same_blocks(ckpt):
    """--tokens cuts the reading short; the blocks are the first tokens of the full text all the same."""
    from argparse import Namespace

    from teft.__main__ import _blocks
    from teft.data import load_texts, tokenize_blocks

    tokenizer = make_byte_tokenizer()
    args = Namespace(tokens=4000, block_size=32)
    full = tokenize_blocks(tokenizer, load_texts("math"), 32, max_tokens=4000)
    assert torch.equal(_blocks(tokenizer, "math", args), full) and full.shape == (125, 32)
    assert sum(len(t) for t in load_texts("math", limit_bytes=8 * 4000)) < sum(len(t) for t in load_texts("math"))
