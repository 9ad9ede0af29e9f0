"""Put trained target experts back into the full model and save an ordinary transformers checkpoint.

`replace` writes the experts in; `wise` interpolates Theta = (1-a) Phi_0 + a Phi* on the expert slices
(WiSE-FT) to trade target gains for less drift; router annealing then trains only the routers on a
domain + general mix so routing adapts to the changed experts.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from teft.errors import TeftError
from teft.model import MoELayout, get_module
from teft.state import ExpertState, extract_keys, load_state
from teft.train import TrainConfig, TrainResult, train_loop

METHODS = ("replace", "wise")


def wise(original: ExpertState, trained: ExpertState, alpha: float) -> ExpertState:
    """WiSE-FT interpolation of the expert slices; alpha=1 is plain replacement."""
    if not 0.0 <= alpha <= 1.0:
        raise TeftError(f"--alpha must be in [0, 1], got {alpha}")
    return OrderedDict((k, (1 - alpha) * original[k].float() + alpha * trained[k].float()) for k in trained)


def apply_state(model: nn.Module, layout: MoELayout, state: ExpertState, method: str = "replace",
                alpha: float = 1.0) -> None:
    """Integrate a target-expert state into the model in place."""
    if method not in METHODS:
        raise TeftError(f"unknown merge method '{method}'; use one of {', '.join(METHODS)}")
    if method == "wise":
        state = wise(extract_keys(model, layout, state), state, alpha)
    load_state(model, layout, state)


def anneal_routers(model: nn.Module, layout: MoELayout, batches: Iterable, cfg: TrainConfig,
                   progress: bool = False) -> TrainResult:
    """Train only the routers (everything else frozen) so routing fits the new experts."""
    previous = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for m in layout.layers for p in get_module(model, m.router).parameters()]
    for p in params:
        p.requires_grad_(True)
    try:
        return train_loop(model, params, batches, cfg, progress=progress, desc="anneal routers")
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(previous.get(name, False))


def save_checkpoint(model: nn.Module, tokenizer, out: str | os.PathLike, info: dict | None = None) -> Path:
    """save_pretrained into a temp dir then rename, so a crash never leaves a half-written checkpoint."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TeftError(f"output directory '{out}' exists and is not empty; choose a new --out")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if info is not None:
            (tmp / "teft_integration.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 32) -> str:
    """Greedy sample, to show a saved checkpoint still produces text."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0][ids.shape[1]:], skip_special_tokens=True)
