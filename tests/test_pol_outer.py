"""Proof-of-Loss scoring and the deterministic Nesterov outer step."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import VOCAB, build

from teft.errors import TeftError
from teft.model import discover_layout
from teft.outer import NesterovOuter, OuterConfig, checkpoint_bytes, from_checkpoint, merge, outer_step, pseudo_gradient
from teft.pol import Scored, block_losses, mean_loss, rank, score, state_block_losses, state_loss
from teft.selection import ExpertMap
from teft.state import extract_state, to_bytes
from teft.train import TrainConfig, train_experts

REPO = Path(__file__).resolve().parents[1]


def _setup():
    model = build("qwen3_moe")
    layout = discover_layout(model)
    emap = ExpertMap({0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}, 8)
    batch = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(5))
    return model, layout, emap, batch


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_block_losses_are_each_blocks_own_loss_and_average_to_the_mean(arch):
    model = build(arch)
    layout = discover_layout(model)
    batches = [torch.randint(0, VOCAB, (n, 16), generator=torch.Generator().manual_seed(n)) for n in (3, 2)]
    blocks = block_losses(model, batches)
    assert blocks.shape == (5,) and blocks.dtype == torch.float64
    alone = [mean_loss(model, [b[i:i + 1]]) for b in batches for i in range(len(b))]
    assert blocks.tolist() == pytest.approx(alone, abs=1e-5)
    assert float(blocks.mean()) == pytest.approx(mean_loss(model, batches), abs=1e-5)
    emap = ExpertMap({0: [0, 1]}, 8)
    nan_state = {k: v * float("nan") for k, v in extract_state(model, layout, emap).items()}
    assert torch.isinf(state_block_losses(model, layout, nan_state, batches)).all()


def test_pol_swaps_without_changing_the_model():
    model, layout, emap, batch = _setup()
    base = extract_state(model, layout, emap)
    base_loss = mean_loss(model, [batch])
    train_experts(model, layout, emap, iter([batch] * 10), TrainConfig(steps=10, lr=3e-2))
    trained = extract_state(model, layout, emap)
    from teft.state import load_state

    load_state(model, layout, base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cand_loss = state_loss(model, layout, trained, [batch])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # restored exactly
    assert cand_loss < base_loss and score(base_loss, cand_loss) == pytest.approx(base_loss - cand_loss)
    # a state that makes things worse scores zero, a NaN state is infinite loss and scores zero
    poisoned = {k: v - 3 * (trained[k] - v) for k, v in base.items()}  # the trained delta, sign-flipped
    assert score(base_loss, state_loss(model, layout, poisoned, [batch])) == 0.0
    nan_state = {k: v * float("nan") for k, v in base.items()}
    assert state_loss(model, layout, nan_state, [batch]) == math.inf
    assert score(base_loss, math.nan) == 0.0


def test_rank_is_deterministic():
    entries = [Scored("b", "h2", 1.0, 0.5), Scored("a", "h1", 1.0, 0.5), Scored("c", "h3", 0.9, 0.7)]
    assert [s.miner for s in rank(entries)] == ["c", "a", "b"]
    assert rank(reversed(entries)) == rank(entries)


def test_nesterov_matches_torch_sgd():
    """The hand-written step equals torch.optim.SGD(nesterov=True) fed the pseudo-gradient."""
    torch.manual_seed(0)
    base = {"layers.0.experts.0.w": torch.randn(4, 3), "layers.0.experts.1.w": torch.randn(2)}
    param = {k: torch.nn.Parameter(v.clone()) for k, v in base.items()}
    sgd = torch.optim.SGD(list(param.values()), lr=0.7, momentum=0.9, nesterov=True)
    outer = NesterovOuter(OuterConfig(lr=0.7, momentum=0.9))
    state = dict(base)
    for _ in range(3):
        deltas = {k: torch.randn_like(v) for k, v in base.items()}
        for k, p in param.items():
            p.grad = deltas[k].clone()
        sgd.step()
        state = outer.step(state, deltas)
    for k in base:
        assert torch.allclose(state[k], param[k].detach(), atol=1e-6)


def test_merge_and_pseudo_gradient():
    a = {"layers.0.experts.0.w": torch.ones(3)}
    b = {"layers.0.experts.0.w": torch.full((3,), 3.0)}
    assert torch.equal(pseudo_gradient(b, a)["layers.0.experts.0.w"], torch.full((3,), 2.0))
    assert torch.allclose(merge([a, b])["layers.0.experts.0.w"], torch.full((3,), 2.0))
    assert torch.allclose(merge([a, b], [3.0, 1.0])["layers.0.experts.0.w"], torch.full((3,), 1.5))
    with pytest.raises(TeftError):
        merge([])
    with pytest.raises(TeftError):
        merge([a], [-1.0])
    # a single merged submission with lr 1 and no momentum reproduces that submission
    sub = {"layers.0.experts.0.w": torch.tensor([0.5, 1.5, 2.5])}
    out = outer_step(b, [sub], NesterovOuter(OuterConfig(lr=1.0, momentum=0.0)))
    assert torch.allclose(out["layers.0.experts.0.w"], sub["layers.0.experts.0.w"])


def test_momentum_save_restore():
    torch.manual_seed(1)
    base = {"layers.1.experts.2.w": torch.randn(5, 5)}
    deltas = [{"layers.1.experts.2.w": torch.randn(5, 5)} for _ in range(3)]
    straight = NesterovOuter()
    s1 = straight.step(base, deltas[0])
    s2 = straight.step(s1, deltas[1])
    resumed = NesterovOuter()
    r1 = resumed.step(base, deltas[0])
    saved = checkpoint_bytes(r1, resumed.buffer)  # the one checkpoint format peers persist and exchange
    r1, momentum = from_checkpoint(saved)
    resumed = NesterovOuter(momentum=momentum)
    r2 = resumed.step(r1, deltas[1])
    assert to_bytes(r2) == to_bytes(s2)


_CHILD = r"""
import sys, torch
sys.path.insert(0, "tests")
from teft.outer import NesterovOuter, outer_step
from teft.state import to_bytes, state_hash
g = torch.Generator().manual_seed(11)
keys = [f"layers.{l}.experts.{e}.w" for l in range(3) for e in range(4)]
base = {k: torch.randn(64, 33, generator=g) for k in keys}
subs = [{k: base[k] + 0.01 * torch.randn(64, 33, generator=g) for k in keys} for _ in range(5)]
opt = NesterovOuter()
state = base
for cycle in range(3):
    state = outer_step(state, subs, opt, weights=[0.1, 0.2, 0.3, 0.15, 0.25])
print(state_hash(to_bytes(state)), state_hash(to_bytes(opt.buffer)))
"""


def test_outer_step_identical_across_processes():
    """Two processes (one with a different thread count) must produce the same bytes."""
    outs = []
    for threads in ("1", "2"):
        env = {"OMP_NUM_THREADS": threads, "PATH": "/usr/bin:/bin"}
        proc = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout.strip())
    assert outs[0] == outs[1] and len(outs[0].split()) == 2
