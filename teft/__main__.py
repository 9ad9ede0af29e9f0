"""`python -m teft`: the whole method on one machine: inspect, select, train, eval, merge, anneal-router."""

from __future__ import annotations

import argparse
import json
import sys
import time

from teft.errors import TeftError

EPILOG = "--model and --data accept the embedded defaults by name (model: tiny; data: general, code, legal, math)."


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TeftError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return name


def _blocks(tokenizer, spec: str, args, split: str = "train"):
    from teft.data import load_texts, tokenize_blocks

    if tokenizer is None:
        raise TeftError("the model directory has no tokenizer files; save one next to the model "
                        "(tokenizer.save_pretrained(DIR))")
    texts = load_texts(spec, split=split)
    blocks = tokenize_blocks(tokenizer, texts, args.block_size, max_tokens=args.tokens)
    if len(blocks) == 0:
        raise TeftError(f"data '{spec}' gives fewer than {args.block_size} tokens; use more text or a "
                        "smaller --block-size")
    return blocks


def _load(args):
    from teft.model import discover_layout, load_model

    model, tokenizer = load_model(args.model, dtype=args.dtype, device=_device(args.device))
    return model, tokenizer, discover_layout(model)


def _scale_flags(p, train: bool = False) -> None:
    """--dtype on every subcommand; --gradient-checkpointing where it trains."""
    from teft.model import DTYPE_CHOICES

    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="weights' dtype: auto keeps the checkpoint's own (bf16 for real MoEs; default auto)")
    if train:
        p.add_argument("--gradient-checkpointing", "--gradient_checkpointing", action="store_true",
                       help="recompute activations in backward: less memory, about a third more time")


def cmd_inspect(args) -> None:
    from teft.model import describe, layout_json

    model, tokenizer, layout = _load(args)
    if args.json and not args.data:
        print(layout_json(layout))
        return
    print(describe(layout))
    if not args.data:
        return
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
    if args.json:
        print(json.dumps(reports, indent=2))
        return
    for label, report in reports.items():
        print(f"\n== {label} model ==" + specialization_table(report))


def cmd_select(args) -> None:
    from teft.data import data_digest
    from teft.model import model_hash
    from teft.routing import routing_profile
    from teft.selection import ExpertMap, select_experts

    if args.method == "des" and not args.general_data:
        raise TeftError("--method des needs --general-data (the text whose dominant experts are excluded)")
    model, tokenizer, layout = _load(args)
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
    emap.save(args.out)
    total = layout.num_experts * len(layout.layers)
    print(f"selected {emap.count} of {total} routed experts ({100 * emap.count / total:.1f}%) "
          f"with {args.method} {budget} over {profile.tokens:,d} tokens -> {args.out}")
    for layer, experts in sorted(layers.items()):
        print(f"  layer {layer:>3}: {experts}")


def _map_for(args, layout):
    from teft.model import model_hash
    from teft.selection import ExpertMap

    emap = ExpertMap.load(args.expert_map)
    emap.check_model(layout, model_hash(args.model))
    return emap


def cmd_train(args) -> None:
    from teft.data import iterate_batches
    from teft.state import save_state
    from teft.train import TrainConfig, train_experts

    model, tokenizer, layout = _load(args)
    emap = _map_for(args, layout)
    init = None
    if args.state:
        from teft.state import load_state, load_state_file

        init = load_state_file(args.state)
        load_state(model, layout, init)
    blocks = _blocks(tokenizer, args.data, args)
    cfg = TrainConfig(steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup,
                      grad_clip=args.grad_clip, seed=args.seed, gradient_checkpointing=args.gradient_checkpointing)
    start = time.time()
    result = train_experts(model, layout, emap, iterate_batches(blocks, args.batch_size, args.seed, args.steps),
                           cfg, progress=True, init=init)
    digest = save_state(result.state, args.out)  # the fp32 masters: on a bf16 model finer than its weights
    print(f"trained {result.trainable_params:,d} expert parameters for {args.steps} steps in "
          f"{time.time() - start:.1f}s: loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; "
          f"state {args.out} sha256 {digest[:16]}")


def cmd_eval(args) -> None:
    import math

    from teft.data import subset
    from teft.pol import mean_loss

    model, tokenizer, layout = _load(args)
    if args.state:
        from teft.state import load_state, load_state_file

        load_state(model, layout, load_state_file(args.state))
    results = {}
    for spec in args.data:
        blocks = _blocks(tokenizer, spec, args, split=args.split)
        if args.max_blocks and len(blocks) > args.max_blocks:
            blocks = subset(blocks, args.seed, args.max_blocks)
        loss = mean_loss(model, [blocks[i:i + args.batch_size] for i in range(0, len(blocks), args.batch_size)])
        results[spec] = {"loss": loss, "perplexity": math.exp(loss), "blocks": len(blocks)}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for spec, r in results.items():
        print(f"{spec:<24} loss {r['loss']:.4f}  perplexity {r['perplexity']:.3f}  ({r['blocks']} blocks)")


def cmd_merge(args) -> None:
    from teft.integrate import apply_state, save_checkpoint
    from teft.state import load_state_file

    model, tokenizer, layout = _load(args)
    state = load_state_file(args.state)
    apply_state(model, layout, state, args.method, args.alpha)
    out = save_checkpoint(model, tokenizer, args.out, {"method": args.method, "alpha": args.alpha,
                                                       "state": str(args.state), "base_model": str(args.model)})
    print(f"merged {len(state)} expert tensors by {args.method} into {out}")


def cmd_anneal(args) -> None:
    import itertools

    from teft.data import iterate_batches
    from teft.integrate import anneal_routers, save_checkpoint
    from teft.train import TrainConfig

    model, tokenizer, layout = _load(args)
    streams = [iterate_batches(_blocks(tokenizer, spec, args), args.batch_size, args.seed + i, args.steps)
               for i, spec in enumerate(args.data)]
    mixed = (next(streams[i % len(streams)]) for i in itertools.count())
    cfg = TrainConfig(steps=args.steps, lr=args.lr, seed=args.seed, grad_clip=args.grad_clip)
    result = anneal_routers(model, layout, mixed, cfg, progress=True)
    out = save_checkpoint(model, tokenizer, args.out, {"method": "router-anneal", "steps": args.steps,
                                                       "data": args.data, "base_model": str(args.model)})
    print(f"annealed routers for {args.steps} steps: loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; "
          f"saved {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m teft", description=__doc__, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, data: bool = True, train: bool = False):
        p.add_argument("--model", required=True, help="local transformers MoE checkpoint directory, or 'tiny'")
        p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available; default auto)")
        p.add_argument("--block-size", "--block_size", type=int, default=128,
                       help="tokens per training/evaluation sequence (default 128)")
        p.add_argument("--batch-size", "--batch_size", type=int, default=8, help="sequences per batch (default 8)")
        p.add_argument("--seed", type=int, default=0, help="seed for shuffling and subsets (default 0)")
        _scale_flags(p, train)
        if data:
            p.add_argument("--tokens", type=int, default=None,
                           help="use at most this many tokens of each dataset (default: all)")

    p = sub.add_parser("inspect", help="print the MoE layout (and routing specialization with --data)",
                       epilog=EPILOG)
    common(p)
    p.add_argument("--data", nargs="*", default=[], help="datasets whose routing profiles to compare")
    p.add_argument("--split", default="validation", help="split of named corpora to route (default validation)")
    p.add_argument("--top-p", "--top_p", type=float, default=0.2,
                   help="budget of each domain's expert set for the overlap table (default 0.2)")
    p.add_argument("--control", action="store_true",
                   help="also analyse a randomly initialised model of the same shape, as a control")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("select", help="choose target experts per layer and write an expert map", epilog=EPILOG)
    common(p)
    p.add_argument("--data", required=True, help="target-domain data (file, folder or corpus name)")
    p.add_argument("--general-data", "--general_data", help="general data, required by --method des")
    p.add_argument("--method", choices=["esft-token", "esft-gate", "des"], default="esft-token",
                   help="esft-token: share of top-k hits; esft-gate: share of routing weight; "
                        "des: domain share minus general share (default esft-token)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--top-k", "--top_k", type=int, help="experts per layer")
    budget.add_argument("--top-p", "--top_p", type=float,
                        help="smallest set per layer whose share of that layer's score reaches P")
    p.add_argument("--out", required=True, help="where to write the expert map JSON")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("train", help="train only the mapped experts and write the target-expert state",
                       epilog=EPILOG)
    common(p, train=True)
    p.add_argument("--expert-map", "--expert_map", required=True, help="expert map JSON from `teft select`")
    p.add_argument("--data", required=True, help="training data (file, folder or corpus name)")
    p.add_argument("--state", help="start from this target-expert state instead of the model's own experts")
    p.add_argument("--steps", type=int, required=True, help="inner steps H")
    p.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate (default 1e-4)")
    p.add_argument("--weight-decay", "--weight_decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--warmup", type=int, default=0, help="linear warmup steps before cosine decay (default 0)")
    p.add_argument("--grad-clip", "--grad_clip", type=float, default=1.0, help="max gradient norm (0: off)")
    p.add_argument("--out", required=True, help="where to write the state (.safetensors)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="loss and perplexity per dataset", epilog=EPILOG)
    common(p)
    p.add_argument("--state", help="evaluate with this target-expert state swapped in")
    p.add_argument("--data", nargs="+", required=True, help="one or more datasets")
    p.add_argument("--split", default="validation", help="split of named corpora (default validation)")
    p.add_argument("--max-blocks", "--max_blocks", type=int, default=256,
                   help="evaluate a seeded subset of at most this many blocks (0: all; default 256)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("merge", help="integrate a state into the full model and save a checkpoint",
                       epilog=EPILOG)
    common(p, data=False)
    p.add_argument("--state", required=True, help="target-expert state (.safetensors)")
    p.add_argument("--method", choices=["replace", "wise"], default="replace",
                   help="replace the experts, or WiSE-FT interpolate (default replace)")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="WiSE-FT weight of the trained experts: (1-a)*base + a*trained (default 1.0)")
    p.add_argument("--out", required=True, help="new checkpoint directory (must not exist or be empty)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("anneal-router", help="train only the routers on a data mix, save a checkpoint",
                       epilog=EPILOG)
    common(p)
    p.add_argument("--data", nargs="+", required=True, help="datasets to mix batch by batch (domain + general)")
    p.add_argument("--steps", type=int, required=True, help="router training steps")
    p.add_argument("--lr", type=float, default=1e-4, help="router learning rate (default 1e-4)")
    p.add_argument("--grad-clip", "--grad_clip", type=float, default=1.0, help="max gradient norm (0: off)")
    p.add_argument("--out", required=True, help="new checkpoint directory")
    p.set_defaults(func=cmd_anneal)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except TeftError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
