"""`python -m teft`: the whole method on one machine: inspect, select, train, eval, merge, anneal-router."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from teft.errors import TeftError

EPILOG = ("--model and --data accept the embedded defaults by name (model: tiny; data: general, code, legal, math). "
          "With --json, stdout holds exactly one JSON document; progress, tables and logs go to stderr.")
ESFT_TOKENS = 131_072  # ESFT routes a sample of this many tokens to score experts
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def _cores() -> int:
    """CPU cores this process may run on (its affinity mask), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- argument types


def _bounded(kind: type, low: float | None = None, high: float | None = None, above: bool = False):
    """An argparse type: `kind` within [low, high] ((low, high] with above=True), refused in one line otherwise."""
    if low is not None and high is not None:
        rule = f"in {'(' if above else '['}{low:g}, {high:g}]"
    else:
        rule = f"{'>' if above else '>='} {low:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        too_low = low is not None and (value <= low if above else value < low)
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


POSITIVE_INT = _bounded(int, 1)
COUNT = _bounded(int, 0)
POSITIVE = _bounded(float, 0, above=True)
NON_NEGATIVE = _bounded(float, 0)
SHARE = _bounded(float, 0, 1, above=True)
WEIGHT = _bounded(float, 0, 1)


def _device_name(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N, mps or auto, got {text!r}")
    return text


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _attach_negative_values(argv: list[str]) -> list[str]:
    """`--lr -1e-3` -> `--lr=-1e-3`: argparse takes '-1e-3' for a flag, so the value reaches the type check."""
    out: list[str] = []
    for token in argv:
        if _NEGATIVE_NUMBER.match(token) and out and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that point at --help, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


# --------------------------------------------------------------------------- checks before any work


def _check_model(args, data: bool = False) -> Path:
    """The model directory exists with a config; when data is read, it has a tokenizer and fits --block-size."""
    from teft.model import resolve_model_path

    path = resolve_model_path(args.model)
    if not data:
        return path
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise TeftError(f"the model directory '{path}' has no tokenizer files; save one next to the model "
                        "(tokenizer.save_pretrained(DIR))")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise TeftError(f"cannot read '{path / 'config.json'}' ({err}); pass a transformers checkpoint") from err
    limit = config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
    if isinstance(limit, int) and args.block_size > limit:
        raise TeftError(f"--block-size {args.block_size} is longer than the model's {limit} positions; "
                        f"use --block-size {limit} or less")
    return path


def _check_data(specs: list[str], split: str = "train") -> None:
    from teft.data import check_data

    for spec in specs:
        check_data(spec, split)


def _check_tokens(args) -> None:
    if args.tokens and args.tokens < args.block_size:
        raise TeftError(f"--tokens {args.tokens} is less than one block of --block-size {args.block_size}; "
                        f"raise --tokens or lower --block-size")


def _writable_parent(path: Path) -> None:
    parent = path.parent.resolve()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise TeftError(f"cannot create '{path}': '{parent}' is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TeftError(f"cannot write under '{parent}' (permission denied); choose another --out")


def _check_out_file(text: str, force: bool, example: str) -> Path:
    """--out names a file that may be written: not a folder, not an existing file unless --force."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise TeftError(f"--out '{text}' is a folder; name a file, e.g. --out {path / example}")
    if path.exists() and not force:
        raise TeftError(f"--out '{text}' exists; choose a new path, or pass --force to overwrite it")
    _writable_parent(path)
    return path


def _check_out_dir(text: str) -> Path:
    """--out names a new checkpoint folder: absent or empty, never overwritten."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise TeftError(f"--out '{text}' is a file; --out names a new checkpoint folder")
    if path.is_dir() and any(path.iterdir()):
        raise TeftError(f"--out '{text}' exists and is not empty; choose a new folder (a checkpoint is never "
                        "overwritten)")
    _writable_parent(path)
    return path


def _read_state(path: str):
    from teft.state import load_state_file

    return load_state_file(path)


# --------------------------------------------------------------------------- shared steps


@dataclass
class Outcome:
    """What a command did: `data` is its --json document, `text` the same for people."""

    data: dict
    text: str


def _load(args):
    from teft.model import discover_layout, load_model

    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    return model, tokenizer, discover_layout(model)


def _blocks(tokenizer, spec: str, args, split: str = "train"):
    """Token blocks of a spec; with --tokens, only as much text is read as those tokens need."""
    from teft.data import load_texts, tokenize_blocks

    limit = args.tokens * 8 if args.tokens else None  # bytes; grown below if the text packs more than 8 per token
    while True:
        texts = load_texts(spec, split=split, limit_bytes=limit)
        blocks = tokenize_blocks(tokenizer, texts, args.block_size, max_tokens=args.tokens or None)
        exhausted = limit is None or sum(len(t.encode("utf-8")) for t in texts) < limit - 4
        if exhausted or len(blocks) == args.tokens // args.block_size:
            break
        limit *= 4
    if len(blocks) == 0:
        raise TeftError(f"data '{spec}' gives fewer than {args.block_size} tokens; use more text or a "
                        "smaller --block-size")
    return blocks


def _scale_flags(p, train: bool = False) -> None:
    """--dtype on every subcommand; --gradient-checkpointing where it trains."""
    from teft.model import DTYPE_CHOICES

    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="weights' dtype: auto keeps the checkpoint's own (bf16 for real MoEs; default auto)")
    if train:
        p.add_argument("--gradient-checkpointing", "--gradient_checkpointing", action="store_true",
                       help="recompute activations in backward: less memory, about a third more time")


def _batches(blocks, batch_size: int) -> list:
    return [blocks[i:i + batch_size] for i in range(0, len(blocks), batch_size)]


def _loss(model, blocks, batch_size: int, desc: str) -> float:
    """Mean loss over blocks with a progress bar on stderr."""
    from tqdm import tqdm

    from teft.pol import mean_loss

    return mean_loss(model, tqdm(_batches(blocks, batch_size), desc=desc, unit="batch", file=sys.stderr))


def _trend(losses: list[float]) -> dict:
    """Mean training loss of the first k vs the last k batches: a trend over different batches, said as such."""
    k = max(1, min(10, len(losses) // 2))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    measure = (f"mean training loss of the first {k} vs the last {k} batches (different batches)"
               if len(losses) > 1 else "training loss of the only batch")
    return {"first": first, "last": last, "window": k, "measure": measure}


def _hold_out(blocks, n: int, seed: int):
    """(training blocks, n held-out blocks) split by a seeded permutation; at most a quarter is held out."""
    import torch

    n = min(n, len(blocks) // 4)
    if n == 0:
        return blocks, blocks[:0]
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
    return blocks[order[n:]], blocks[order[:n]]


def _common(p: argparse.ArgumentParser, train: bool = False) -> None:
    """Options every subcommand takes, with the same meaning and default everywhere."""
    p.add_argument("--model", required=True, help="local transformers MoE checkpoint directory, or 'tiny'")
    p.add_argument("--device", type=_device_name, default="auto",
                   help="cpu, cuda, cuda:N, mps or auto (cuda when available; default auto)")
    p.add_argument("--threads", type=POSITIVE_INT, default=_cores(),
                   help=f"CPU threads for torch (default: the cores this process may use, {_cores()} here); "
                        "use 1 per process when several share the machine")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document on stdout (progress and logs go to stderr)")
    _scale_flags(p, train)


def _data_options(p: argparse.ArgumentParser, tokens: int = 0, seed: bool = True) -> None:
    """Options of commands that read token blocks."""
    p.add_argument("--block-size", "--block_size", type=POSITIVE_INT, default=128,
                   help="tokens per sequence (default 128)")
    p.add_argument("--batch-size", "--batch_size", type=POSITIVE_INT, default=8,
                   help="sequences per batch (default 8)")
    default = f"{tokens:,d}" if tokens else "all"
    why = ", the sample size ESFT scores experts on" if tokens == ESFT_TOKENS else ""
    p.add_argument("--tokens", type=COUNT, default=tokens,
                   metavar="N", help=f"use only the first N tokens of each dataset (default {default}{why}; 0: all)")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="seed for shuffling and subsets (default 0)")


def _out_file(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", required=True, help=f"where to write {what} (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")


# --------------------------------------------------------------------------- commands


def cmd_inspect(args) -> Outcome:
    from teft.model import describe, layout_dict

    _check_model(args, data=bool(args.data))
    _check_data(args.data, args.split)
    _check_tokens(args)
    model, tokenizer, layout = _load(args)
    data, text = layout_dict(layout), describe(layout)
    if not args.data:
        return Outcome(data, text)
    from teft.analysis import specialization, specialization_table, token_routes

    blocks = {spec: _blocks(tokenizer, spec, args, split=args.split) for spec in args.data}
    models = {"trained": model}
    if args.control:
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(args.seed)
        models["random-init control"] = AutoModelForCausalLM.from_config(model.config).to(model.device)
    reports = {}
    for label, m in models.items():
        routes = {spec: token_routes(m, layout, b, args.batch_size, progress=True) for spec, b in blocks.items()}
        reports[label] = specialization({k: v[0] for k, v in routes.items()}, {k: v[1] for k, v in routes.items()},
                                        layout, top_p=args.top_p, seed=args.seed)
    data["specialization"] = reports
    text += "".join(f"\n\n== {label} model ==" + specialization_table(r) for label, r in reports.items())
    return Outcome(data, text)


def cmd_select(args) -> Outcome:
    from teft.data import data_digest
    from teft.model import model_hash
    from teft.routing import routing_profile
    from teft.selection import ExpertMap, select_experts

    if args.method == "des" and not args.general_data:
        raise TeftError("--method des needs --general-data (the text whose dominant experts are excluded)")
    if args.general_data and args.method != "des":
        raise TeftError("--general-data is used only by --method des; drop it or use --method des")
    _check_model(args, data=True)
    _check_data([args.data, *([args.general_data] if args.general_data else [])])
    _check_tokens(args)
    out = _check_out_file(args.out, args.force, "map.json")
    model, tokenizer, layout = _load(args)
    if args.top_k is not None and args.top_k > layout.num_experts:
        raise TeftError(f"--top-k {args.top_k} is more than the model's {layout.num_experts} experts per layer; "
                        f"use at most {layout.num_experts}")
    profile = routing_profile(model, layout, _blocks(tokenizer, args.data, args), args.batch_size, progress=True,
                              desc="routing domain")
    general = None
    if args.general_data:
        general = routing_profile(model, layout, _blocks(tokenizer, args.general_data, args), args.batch_size,
                                  progress=True, desc="routing general")
    layers = select_experts(profile, args.method, args.top_k, args.top_p, general)
    budget = {"top_k": args.top_k} if args.top_k is not None else {"top_p": args.top_p}
    emap = ExpertMap(layers, layout.num_experts, args.method, budget, profile.tokens, model_hash(args.model),
                     data_digest(args.data, "train"),
                     data_digest(args.general_data, "train") if args.general_data else "")
    emap.save(out)
    total = layout.num_experts * len(layout.layers)
    text = (f"selected {emap.count} of {total} routed experts ({100 * emap.count / total:.1f}%) "
            f"with {args.method} {budget} over {profile.tokens:,d} tokens -> {out}\n"
            + "\n".join(f"  layer {layer:>3}: {experts}" for layer, experts in sorted(layers.items())))
    data = {"out": str(out), "method": args.method, "budget": budget, "tokens": profile.tokens,
            "selected": emap.count, "total": total, "layers": {str(k): v for k, v in sorted(layers.items())}}
    return Outcome(data, text)


def cmd_train(args) -> Outcome:
    from teft.data import iterate_batches
    from teft.model import model_hash
    from teft.selection import ExpertMap
    from teft.state import check_state_layout, load_state, save_state
    from teft.train import TrainConfig, train_experts

    _check_model(args, data=True)
    _check_data([args.data])
    _check_tokens(args)
    out = _check_out_file(args.out, args.force, "state.safetensors")
    emap = ExpertMap.load(args.expert_map)
    if emap.count == 0:
        raise TeftError(f"the expert map '{args.expert_map}' selects no experts: nothing to train; "
                        "re-run `teft select` with a larger budget")
    state = _read_state(args.state) if args.state else None
    if args.background == "bf16":
        model, tokenizer, layout = _load(args)
    else:  # a light miner: the unselected experts frozen in int8 / 4 bits, expanded one at a time
        from teft.light import load_light_model

        model, tokenizer, layout = load_light_model(args.model, emap, args.background, args.dtype, args.device)
    emap.check_model(layout, model_hash(args.model))
    if state is not None:
        check_state_layout(state, layout)
        load_state(model, layout, state)
    blocks = _blocks(tokenizer, args.data, args)
    cfg = TrainConfig(steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup,
                      grad_clip=args.grad_clip, seed=args.seed, gradient_checkpointing=args.gradient_checkpointing,
                      optimizer=args.optimizer)
    start = time.time()
    result = train_experts(model, layout, emap, iterate_batches(blocks, args.batch_size, args.seed, args.steps),
                           cfg, progress=True, init=state)
    seconds = time.time() - start
    digest = save_state(result.state, out)  # the fp32 masters: on a bf16 model finer than its weights
    trend = _trend(result.losses)
    from teft.light import resident_bytes

    held = resident_bytes(model)
    data = {"out": str(out), "sha256": digest, "steps": args.steps, "seconds": round(seconds, 3),
            "trainable_params": result.trainable_params, "loss": trend, "losses": result.losses,
            "optimizer": args.optimizer, "optimizer_state_bytes": result.optimizer_state_bytes,
            "background": args.background, "model_bytes": {"full_precision": held.frozen_full,
                                                           "background": held.background}}
    text = (f"trained {result.trainable_params:,d} expert parameters for {args.steps} steps in {seconds:.1f}s: "
            f"{trend['measure']}: {trend['first']:.4f} -> {trend['last']:.4f}; state {out} sha256 {digest[:16]}; "
            f"model held {held.total / 2**20:.1f} MiB ({args.background} background)")
    return Outcome(data, text)


def cmd_eval(args) -> Outcome:
    from teft.data import subset
    from teft.state import check_state_layout, load_state

    _check_model(args, data=True)
    _check_data(args.data, args.split)
    _check_tokens(args)
    state = _read_state(args.state) if args.state else None
    model, tokenizer, layout = _load(args)
    if state is not None:
        check_state_layout(state, layout)
        load_state(model, layout, state)
    results = {}
    for spec in args.data:
        blocks = _blocks(tokenizer, spec, args, split=args.split)
        if args.max_blocks and len(blocks) > args.max_blocks:
            blocks = subset(blocks, args.seed, args.max_blocks)
        loss = _loss(model, blocks, args.batch_size, desc=f"eval {spec}")
        results[spec] = {"loss": loss, "perplexity": math.exp(loss), "blocks": len(blocks)}
    text = "\n".join(f"{spec:<24} loss {r['loss']:.4f}  perplexity {r['perplexity']:.3f}  ({r['blocks']} blocks)"
                     for spec, r in results.items())
    return Outcome(results, text)


def cmd_pack(args) -> Outcome:
    from teft.model import model_hash
    from teft.pack import build_pack, write_pack
    from teft.selection import ExpertMap

    _check_model(args)
    out_dir = Path(args.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise TeftError(f"--out '{args.out}' is a file; name a folder: the pack is written there under its hash")
    emap = ExpertMap.load(args.expert_map)
    emap.check_model(_load_layout_only(args.model), model_hash(args.model))
    data = build_pack(args.model, emap, args.background, args.dtype)
    data_path = write_pack(data, out_dir)
    digest = data_path.name.split(".")[0]
    text = f"pack {data_path} ({len(data) / 2**20:.1f} MiB, {args.background} background), sha256 {digest}"
    return Outcome({"out": str(data_path), "sha256": digest, "bytes": len(data), "background": args.background}, text)


def _load_layout_only(spec):
    """The layout of a checkpoint from its config alone (a meta-device model: no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from teft.model import discover_layout, resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(spec), local_files_only=True)
    with torch.device("meta"):
        return discover_layout(AutoModelForCausalLM.from_config(config))


def cmd_merge(args) -> Outcome:
    from teft.integrate import apply_state, save_checkpoint
    from teft.state import check_state_layout

    if args.method == "replace" and args.alpha is not None:
        raise TeftError("--alpha is for --method wise only; drop it, or use --method wise --alpha A")
    alpha = 1.0 if args.method == "replace" else (0.5 if args.alpha is None else args.alpha)
    _check_model(args)
    out = _check_out_dir(args.out)
    state = _read_state(args.state)
    model, tokenizer, layout = _load(args)
    check_state_layout(state, layout)
    apply_state(model, layout, state, args.method, alpha)
    save_checkpoint(model, tokenizer, out, {"method": args.method, "alpha": alpha, "state": str(args.state),
                                            "base_model": str(args.model)})
    data = {"out": str(out), "method": args.method, "alpha": alpha, "tensors": len(state)}
    return Outcome(data, f"merged {len(state)} expert tensors by {args.method} (alpha {alpha:g}) into {out}")


def cmd_anneal(args) -> Outcome:
    import itertools

    from teft.data import iterate_batches
    from teft.integrate import anneal_routers, save_checkpoint
    from teft.train import TrainConfig

    _check_model(args, data=True)
    _check_data(args.data)
    _check_tokens(args)
    out = _check_out_dir(args.out)
    model, tokenizer, layout = _load(args)
    train, held = {}, {}
    for i, spec in enumerate(args.data):
        train[spec], held[spec] = _hold_out(_blocks(tokenizer, spec, args), args.eval_blocks, args.seed + i)
    before = {spec: _loss(model, b, args.batch_size, f"before {spec}") for spec, b in held.items() if len(b)}
    streams = [iterate_batches(blocks, args.batch_size, args.seed + i, args.steps)
               for i, blocks in enumerate(train.values())]
    mixed = (next(streams[i % len(streams)]) for i in itertools.count())
    cfg = TrainConfig(steps=args.steps, lr=args.lr, seed=args.seed, grad_clip=args.grad_clip)
    result = anneal_routers(model, layout, mixed, cfg, progress=True)
    after = {spec: _loss(model, held[spec], args.batch_size, f"after {spec}") for spec in before}
    save_checkpoint(model, tokenizer, out, {"method": "router-anneal", "steps": args.steps,
                                            "data": args.data, "base_model": str(args.model)})
    evals = {spec: {"before": before[spec], "after": after[spec], "blocks": len(held[spec])} for spec in before}
    data = {"out": str(out), "steps": args.steps, "eval": evals, "losses": result.losses,
            "measure": "loss on the same held-out blocks of each dataset, before -> after annealing"}
    if evals:
        lines = [f"  {spec:<24} {e['before']:.4f} -> {e['after']:.4f}  ({e['blocks']} held-out blocks)"
                 for spec, e in evals.items()]
        summary = "loss on the same held-out blocks before -> after:\n" + "\n".join(lines)
    else:
        summary = "no before/after loss (--eval-blocks 0, or too few blocks to hold any out)"
    return Outcome(data, f"annealed routers for {args.steps} steps; {summary}\nsaved {out}")


# --------------------------------------------------------------------------- parser and entry point


def build_parser() -> argparse.ArgumentParser:
    from teft import version

    parser = _Parser(prog="python -m teft", description=__doc__, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="print the MoE layout (and routing specialization with --data)",
                       epilog=EPILOG)
    _common(p)
    _data_options(p, tokens=ESFT_TOKENS)
    p.add_argument("--data", nargs="*", default=[], help="datasets whose routing profiles to compare")
    p.add_argument("--split", default="validation", help="split of named corpora to route (default validation)")
    p.add_argument("--top-p", "--top_p", type=SHARE, default=0.2,
                   help="budget of each domain's expert set for the overlap table, in (0, 1] (default 0.2)")
    p.add_argument("--control", action="store_true",
                   help="also analyse a randomly initialised model of the same shape, as a control")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("select", help="choose target experts per layer and write an expert map", epilog=EPILOG)
    _common(p)
    _data_options(p, tokens=ESFT_TOKENS, seed=False)
    p.add_argument("--data", required=True, help="target-domain data (file, folder or corpus name)")
    p.add_argument("--general-data", "--general_data", help="general data, required by --method des (only)")
    p.add_argument("--method", choices=["esft-token", "esft-gate", "des"], default="esft-token",
                   help="esft-token: share of top-k hits; esft-gate: share of routing weight; "
                        "des: domain share minus general share (default esft-token)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--top-k", "--top_k", type=POSITIVE_INT, help="experts per layer")
    budget.add_argument("--top-p", "--top_p", type=SHARE,
                        help="smallest set per layer whose share of that layer's score reaches P, in (0, 1]")
    _out_file(p, "the expert map JSON")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("train", help="train only the mapped experts and write the target-expert state",
                       epilog=EPILOG)
    _common(p, train=True)
    _data_options(p)
    p.add_argument("--expert-map", "--expert_map", required=True, help="expert map JSON from `teft select`")
    p.add_argument("--data", required=True, help="training data (file, folder or corpus name)")
    p.add_argument("--state", help="start from this target-expert state instead of the model's own experts")
    p.add_argument("--steps", type=POSITIVE_INT, required=True, help="inner steps H (at least 1)")
    p.add_argument("--lr", type=POSITIVE, default=1e-4, help="peak AdamW learning rate, > 0 (default 1e-4)")
    p.add_argument("--weight-decay", "--weight_decay", type=NON_NEGATIVE, default=0.0,
                   help="AdamW weight decay (default 0)")
    p.add_argument("--warmup", type=COUNT, default=0, help="linear warmup steps before cosine decay (default 0)")
    p.add_argument("--grad-clip", "--grad_clip", type=NON_NEGATIVE, default=1.0,
                   help="max gradient norm (0: off; default 1)")
    p.add_argument("--background", choices=("bf16", "int8", "4bit"), default="bf16",
                   help="the experts not trained: held in the checkpoint's dtype (bf16, default) or frozen in "
                        "int8 / 4 bits and expanded one at a time (a light miner: a third of the memory)")
    p.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default="adamw",
                   help="AdamW with fp32 moments (default) or bitsandbytes' 8-bit moments (a quarter of the bytes)")
    _out_file(p, "the state (.safetensors)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="loss and perplexity per dataset", epilog=EPILOG)
    _common(p)
    _data_options(p)
    p.add_argument("--state", help="evaluate with this target-expert state swapped in")
    p.add_argument("--data", nargs="+", required=True, help="one or more datasets")
    p.add_argument("--split", default="validation", help="split of named corpora (default validation)")
    p.add_argument("--max-blocks", "--max_blocks", type=COUNT, default=256,
                   help="evaluate a seeded subset of at most this many blocks (0: all; default 256)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("pack", help="a light miner's pack: hub, selected experts, low-bit background, one file",
                       epilog=EPILOG)
    _common(p)
    p.add_argument("--expert-map", "--expert_map", required=True, help="expert map JSON from `teft select`")
    p.add_argument("--background", choices=("int8", "4bit"), default="4bit",
                   help="the form of the experts the map does not select (default 4bit)")
    p.add_argument("--out", required=True, help="folder to write the pack into, named by its sha256")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("merge", help="integrate a state into the full model and save a checkpoint",
                       epilog=EPILOG)
    _common(p)
    p.add_argument("--state", required=True, help="target-expert state (.safetensors)")
    p.add_argument("--method", choices=["replace", "wise"], default="replace",
                   help="replace the experts, or WiSE-FT interpolate (default replace)")
    p.add_argument("--alpha", type=WEIGHT, default=None,
                   help="--method wise only: weight of the trained experts, (1-a)*base + a*trained, in [0, 1] "
                        "(default 0.5)")
    p.add_argument("--out", required=True, help="new checkpoint folder (must not exist, or be empty)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("anneal-router", help="train only the routers on a data mix, save a checkpoint",
                       epilog=EPILOG)
    _common(p)
    _data_options(p)
    p.add_argument("--data", nargs="+", required=True, help="datasets to mix batch by batch (domain + general)")
    p.add_argument("--steps", type=POSITIVE_INT, required=True, help="router training steps (at least 1)")
    p.add_argument("--lr", type=POSITIVE, default=1e-4, help="router learning rate, > 0 (default 1e-4)")
    p.add_argument("--grad-clip", "--grad_clip", type=NON_NEGATIVE, default=1.0,
                   help="max gradient norm (0: off; default 1)")
    p.add_argument("--eval-blocks", "--eval_blocks", type=COUNT, default=16,
                   help="blocks of each dataset held out of training and evaluated before and after, so the "
                        "printed losses compare the same blocks (at most a quarter of each; 0: none; default 16)")
    p.add_argument("--out", required=True, help="new checkpoint folder (must not exist, or be empty)")
    p.set_defaults(func=cmd_anneal)
    return parser


def _prepare(args) -> None:
    """Settings every command needs before it touches a model: threads, then the device."""
    import torch

    torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device.startswith("cuda") and not torch.cuda.is_available():
        raise TeftError(f"--device {args.device} was asked for but torch sees no CUDA device; use --device cpu")
    elif args.device == "mps" and not torch.backends.mps.is_available():
        raise TeftError("--device mps was asked for but torch sees no MPS device; use --device cpu")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(_attach_negative_values(sys.argv[1:] if argv is None else list(argv)))
    except SystemExit as done:  # --help, --version, or a usage error already printed
        return done.code if isinstance(done.code, int) else 2
    stdout = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            _prepare(args)
            outcome = args.func(args)
    except TeftError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(outcome.text, file=sys.stderr)
        print(json.dumps(outcome.data, indent=2), file=stdout)
    else:
        print(outcome.text, file=stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
