"""Proof-of-Loss on data a miner cannot see: private held-out scoring and the public-split overfit flag."""

from __future__ import annotations

import copy

import pytest
import torch
from swarm_double import FEW_STEPS, heldout_math_blocks

from swarm.launch import write_manifest
from swarm.net.identity import load_or_create
from swarm.protocol.manifest import load
from swarm.protocol.runtime import load_runtime
from swarm.roles.miner import train_submission
from swarm.roles.validator import judge, yardstick
from swarm.sim.adversaries.overfit import within_norm
from teft.state import to_bytes


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    root = tmp_path_factory.mktemp("validator")
    key = load_or_create(root / "v.key").public_key_str
    path = write_manifest("configs/tiny.yaml", root / "run" / "run.yaml", [key], 1.9e9,
                          {"quorum": 1, "inner": {**FEW_STEPS, "steps": 8}})
    rt = load_runtime(load(path))
    rt.private_blocks = heldout_math_blocks(root / "heldout.jsonl.gz", rt)
    return rt


def test_an_update_fitted_to_the_public_split_scores_zero_and_an_honest_one_does_not(rt):
    stick = yardstick(rt, rt.initial_state, b"seed")
    assert stick.public is not None and stick.public_base_loss is not None
    honest = train_submission(rt, rt.initial_state, "honest", 0)
    verdict = judge(rt, rt.initial_state, stick, "honest", "h" * 64, honest.payload)
    assert verdict.reason is None and verdict.score > 0

    # the worst case for public data: a miner that trained on the very public blocks this cycle is scored on
    # (as if it had predicted the seed) gains far more there than on held-out data, and is flagged
    overfit_rt = copy.copy(rt)
    overfit_rt.train_blocks = torch.cat(stick.public)
    overfit_rt.manifest = rt.manifest.model_copy(update={"inner": rt.manifest.inner.model_copy(update={"steps": 24})})
    overfit = train_submission(overfit_rt, rt.initial_state, "overfit", 0)
    fitted = within_norm(overfit.state, rt.initial_state, 0.95 * rt.manifest.max_delta_norm)  # pass the norm check
    verdict = judge(rt, rt.initial_state, stick, "overfit", "o" * 64, to_bytes(fitted, rt.payload_dtype))
    assert verdict.score == 0.0 and "fitted to public data" in verdict.reason, verdict


def test_without_private_data_the_public_split_is_the_yardstick(rt):
    public_only = copy.copy(rt)
    public_only.private_blocks = None
    stick = yardstick(public_only, rt.initial_state, b"seed")
    assert stick.public is None
    # with private data, the overfit check measures a quarter of those same public blocks
    scoring = {tuple(row) for b in stick.batches for row in b.tolist()}
    check = [tuple(row) for b in yardstick(rt, rt.initial_state, b"seed").public for row in b.tolist()]
    assert len(check) == len(scoring) // 4 and set(check) <= scoring
