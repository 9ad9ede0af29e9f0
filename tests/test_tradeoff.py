"""scripts/tradeoff.py --quick end to end, as a real subprocess on the embedded tiny model."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "tradeoff.py"
METHODS = ("full", "esft-token@0.2", "esft-gate@0.2", "des@0.2", "des@0.5")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("tradeoff")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_help_lists_every_flag():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in ("--model", "--steps", "--batch-size", "--eval-blocks", "--methods", "--lrs-full", "--lrs-teft",
                 "--out", "--seed", "--quick"):
        assert flag in proc.stdout


def test_json_has_every_method_with_finite_losses(quick):
    out, _ = quick
    report = json.loads((out / "tradeoff.json").read_text())
    assert report["quick"] is True
    assert set(report["methods"]) == set(METHODS)
    runs = report["runs"]
    assert {r["curve"] for r in runs if r.get("alpha") is None} == set(METHODS)
    base = report["base"]
    for row in [base, *runs]:
        for key in ("math_loss", "general_loss", "code_loss", "legal_loss", "general_ppl", "drift"):
            assert math.isfinite(row[key]), (row["label"], key, row[key])
    for r in runs:
        assert math.isclose(r["drift"], r["general_loss"] - base["general_loss"], abs_tol=1e-9)
        assert r["trainable_params"] > 0
    full = next(r for r in runs if r["label"] == "full")
    assert full["trainable_params"] == report["param_counts"]["total"]
    teft = [r for r in runs if r["method"] != "full" and r.get("alpha") is None]
    assert all(r["trainable_params"] < full["trainable_params"] for r in teft)
    alphas = sorted(r["alpha"] for r in runs if r.get("alpha") is not None)
    assert alphas == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75]  # WiSE for the best full and the best TEFT run


def test_png_and_markdown_written(quick):
    out, proc = quick
    png = (out / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    md = (out / "tradeoff.md").read_text()
    assert "## General drift at matched math loss" in md
    assert any(line.startswith("Verdict: ") for line in md.splitlines())
    assert "Verdict: " in proc.stdout
