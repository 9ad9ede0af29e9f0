"""Benchmark: TEFT at a real model's shape against the hardware floor, in one run on one device.

Random bf16 weights of a real shape (configs/shapes/NAME.json, transformers config fields) are built directly
on the device (nothing downloaded, never an fp32 copy on the host). Measured, with ratios to the floor:

- floor: the cheapest correct training step: forward + backward through every layer with the same chunked
  loss the TEFT step uses (teft.train.chunked_cross_entropy) and no weight gradient at all (only the input
  embeddings' output requires grad): no TEFT step can be cheaper in time or memory;
- select: routing-statistics throughput, against a plain bf16 forward;
- TEFT train step (selected experts by top-p of the measured routing) at each batch size: time, peak memory,
  tokens/s; with activation checkpointing only where the plain step runs out of memory. Tokens are drawn by
  Zipf's law, as text's are, and the expert map is routed on the very blocks the steps train on (a
  random-weight model routes uniformly drawn tokens of another block elsewhere); each step's routed share of
  the selected experts is reported next to the map's, and on fresh blocks;
- Proof-of-Loss: seconds per submission on 64 x seq validation tokens; payload bytes;
- full fine-tuning at batch 1 (AdamW on every parameter, in the weights' dtype: bf16 weights, gradients and
  moments, 8 B/param, where TEFT keeps fp32 masters, gradients and moments, 16 B/param), or "out of memory".

Peak memory on CUDA is torch's max_memory_allocated; on CPU it is the model's and the masters' bytes plus the
peak of the allocations torch's profiler records over one fresh step maker and two steps.

    python scripts/bench_gpu.py --shape olmoe-1b-7b --out runs/bench_gpu     # on an 80 GB GPU
    python scripts/bench_gpu.py --shape tiny --quick --out runs/bench_gpu    # anywhere, in seconds (CI)
    python scripts/bench_gpu.py --shape olmoe-1b-7b --layers 2 --seq-len 64 --batch-sizes 1,2 --device cpu \
        --reps 1 --pol-blocks 8 --no-full-ft --out runs/bench_cpu            # real width, 2 layers, on a CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "configs" / "shapes"
GIB = 1 << 30


def shape_config(name: str, layers: int | None = None):
    """A transformers config from configs/shapes/NAME.json (or a path to such a file); `layers` keeps the
    first N decoder layers at full width (a real-width model that fits a small machine)."""
    from transformers import AutoConfig

    path = Path(name) if name.endswith(".json") else SHAPES / f"{name}.json"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in SHAPES.glob("*.json")))
        raise SystemExit(f"no shape '{name}': pass one of {names} or a config JSON path")
    fields = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    if layers is not None:
        if layers < 1:
            raise SystemExit(f"--layers must be at least 1, got {layers}")
        fields["num_hidden_layers"] = min(layers, fields.get("num_hidden_layers", layers))
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def build(config, device: str, dtype: torch.dtype, seed: int = 0):
    """Random weights of the shape, allocated on the device in the target dtype from the start."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.02)
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def clear(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], None], device: str, warmup: int, reps: int) -> dict:
    """Median seconds of `fn` after warmup, and peak device memory over the timed calls (CUDA only)."""
    clear(device)
    for _ in range(warmup):
        fn()
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    return {"time_s": statistics.median(times), "peak_bytes": peak}


def allocation_peak(fn: Callable[[], None]) -> int:
    """Peak of the bytes torch allocated and had not freed while `fn` ran, relative to its start, from the
    profiler's memory events (CPU: there is no max_memory_allocated)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # every allocation (+) and free (-) in time order; FunctionEvents would fold most of them into their ops
    events = sorted((e.start_ns(), i, e.nbytes()) for i, e in enumerate(prof.profiler.kineto_results.events())
                    if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    live = peak = 0
    for _, _, change in events:
        live += change
        peak = max(peak, live)
    return peak


def resident_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def attempt(label: str, fn: Callable[[], dict], device: str) -> dict:
    """Run one measurement; an out-of-memory error becomes a result instead of the end of the run."""
    try:
        result = fn()
    except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
        if not is_oom(err):
            raise
        result = {"error": "out of memory"}
    clear(device)
    print(f"  {label}: {result}", flush=True)
    return result


def floor_step(model, ids: torch.Tensor) -> Callable[[], Callable[[], None]]:
    """The cheapest correct step: the TEFT step's own loss (decoder, then the chunked cross-entropy), backward
    through every layer, and no weight gradient: only the input embeddings' output requires grad."""
    from teft.model import decoder_and_head
    from teft.train import chunked_cross_entropy

    parts = decoder_and_head(model)
    if parts is None:
        raise SystemExit("this shape's logits are not lm_head(last hidden state): the floor needs the chunked loss")
    decoder, head = parts
    labels = ids[:, 1:].reshape(-1)

    def make():
        def step():
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            with torch.autocast(device_type=ids.device.type, dtype=torch.bfloat16, enabled=ids.device.type == "cuda"):
                hidden = decoder(inputs_embeds=embeds, use_cache=False).last_hidden_state
                loss = chunked_cross_entropy(head, hidden[:, :-1].reshape(-1, hidden.shape[-1]), labels)
            loss.backward()
        return step
    return make


def teft_step(model, params: list, ids: torch.Tensor) -> Callable[[], Callable[[], None]]:
    """What the inner loop does per step: chunked loss, backward, clipping, AdamW on the fp32 masters."""
    from teft.train import lm_loss

    def make():
        for p in params:
            p.grad = None  # a step maker starts from nothing left by an earlier one
        optimizer = torch.optim.AdamW(params, lr=1e-5)

        def step():
            loss = lm_loss(model, ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        return step
    return make


def with_checkpointing(model, enabled: bool, fn: Callable[[], dict]) -> dict:
    from teft.train import gradient_checkpointing

    with gradient_checkpointing(model, enabled):
        return fn()


def train_measure(model, ids, device, warmup, reps, make_step, resident: int = 0) -> dict:
    """The step as is; where it runs out of memory, again with activation checkpointing. `resident`: bytes live
    before the step maker runs (model, masters), added to the CPU allocation peak."""
    tokens = ids.numel()
    for ckpt in (False, True):
        try:
            result = with_checkpointing(model, ckpt, lambda: timed(make_step(), device, warmup, reps))
            if not device.startswith("cuda"):
                def two_steps():
                    step = make_step()
                    step()
                    step()
                clear(device)
                result["peak_bytes"] = resident + with_checkpointing(model, ckpt, lambda: allocation_peak(two_steps))
        except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
            if not is_oom(err):
                raise
            clear(device)
            continue
        result.update(tokens_per_s=tokens / result["time_s"], checkpointing=ckpt)
        return result
    return {"error": "out of memory"}


ZIPF_EXPONENT = 1.1  # token frequencies of natural text fall off about as 1 / rank


def zipf_weights(vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Sampling weights over token ids: Zipf's law over a random ranking of the vocabulary."""
    ranks = torch.randperm(vocab, generator=gen).double()
    return (ranks + 1).pow(-ZIPF_EXPONENT)


def selected_share(profile, emap) -> float:
    """Mean over layers of the share of (token, expert) pairs routed to the map's experts."""
    share = profile.share("token")
    rows = [float(share[row, emap.layers.get(layer, [])].sum()) for row, layer in enumerate(profile.layers)]
    return sum(rows) / len(rows)


FULL_FT_BYTES_PER_PARAM = {"bfloat16": 8, "float32": 16}  # weights + grads + AdamW's two moments, in that dtype
TEFT_BYTES_PER_PARAM = 16  # fp32 master + fp32 grad + fp32 moments, per trainable parameter


def run(args) -> dict:
    from teft.model import discover_layout
    from teft.pol import state_loss
    from teft.routing import routing_profile
    from teft.selection import ExpertMap, select_experts
    from teft.state import expected_size, extract_state
    from teft.train import lm_loss, trainable_experts

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    if device == "cpu":
        torch.set_num_threads(args.threads)
    config = shape_config(args.shape, args.layers)
    seq = args.seq_len
    warmup, reps = (1, 2) if args.quick else (2, 5)
    if args.reps is not None:
        warmup, reps = min(warmup, args.reps), args.reps
    report: dict = {"shape": args.shape, "layers": config.num_hidden_layers,
                    "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "dtype": args.dtype, "seq_len": seq, "batch_sizes": args.batch_sizes, "top_p": args.top_p,
                    "pol_blocks": args.pol_blocks,
                    "torch": torch.__version__}
    start = time.perf_counter()
    try:
        model = build(config, device, dtype)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
        if not is_oom(err):
            raise
        report["load"] = {"error": "out of memory"}
        return report
    sync(device)
    layout = discover_layout(model)
    model_bytes = resident_bytes([*model.parameters(), *model.buffers()])
    report["load"] = {"time_s": time.perf_counter() - start, "params": layout.param_counts,
                      "bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
                      "peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None}
    print(f"{args.shape} ({config.num_hidden_layers} layers): {layout.param_counts['total']:,d} parameters on "
          f"{report['device']}", flush=True)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.get_text_config().vocab_size
    token_weights = zipf_weights(vocab, gen)

    def tokens(n: int) -> torch.Tensor:
        return torch.multinomial(token_weights, n * seq, replacement=True, generator=gen).view(n, seq).to(device)

    # select: routing statistics against a plain forward of the same batches. With random weights a token's
    # experts follow from its embedding, so blocks of uniformly drawn tokens (few repeats in a large vocabulary)
    # each route elsewhere and a map routed on some barely fits others. Tokens are drawn as text is, a few of them
    # frequent (zipf_weights), and the training steps below take their batches from the very routed blocks
    route_batch = max(args.batch_sizes)
    route_blocks = tokens(route_batch * (1 if args.quick else 4))

    @torch.no_grad()
    def plain_forward():
        for i in range(0, len(route_blocks), route_batch):
            model(input_ids=route_blocks[i:i + route_batch], use_cache=False)

    forward = attempt("plain bf16 forward", lambda: timed(plain_forward, device, 1, reps), device)
    profile = {}

    def routing():
        profile["p"] = routing_profile(model, layout, route_blocks, route_batch)

    routed = attempt("select routing", lambda: timed(routing, device, 1, reps), device)
    for result in (forward, routed):
        if "time_s" in result:
            result["tokens_per_s"] = route_blocks.numel() / result["time_s"]
    report["forward"], report["routing"] = forward, routed
    if "p" not in profile:
        return report
    emap = ExpertMap(select_experts(profile["p"], "esft-token", top_p=args.top_p), layout.num_experts)
    trainable = sum(layout.expert_numel(layout.layer(layer)) * len(ids) for layer, ids in emap.layers.items())
    report["selection"] = {"selected": emap.count, "total": layout.num_experts * len(layout.layers),
                           "trainable_params": trainable}
    report["routed_share"] = {"map": selected_share(profile["p"], emap), "train_batch": {},
                              "fresh_random_batch": {}}
    report["payload_bytes"] = {"float32": expected_size(layout, emap, torch.float32),
                               "bfloat16": expected_size(layout, emap, torch.bfloat16)}
    print(f"  selected {emap.count} of {report['selection']['total']} experts, {trainable:,d} parameters; "
          f"they take {100 * report['routed_share']['map']:.1f}% of the routed (token, expert) pairs of the "
          f"{len(route_blocks)} routed blocks", flush=True)

    report["floor"], report["teft"] = {}, {}
    for batch in args.batch_sizes:
        ids = route_blocks[:batch]  # trained on what the map was routed on
        share = selected_share(routing_profile(model, layout, ids, batch), emap)
        fresh = selected_share(routing_profile(model, layout, tokens(batch), batch), emap)
        report["routed_share"]["train_batch"][batch] = share
        report["routed_share"]["fresh_random_batch"][batch] = fresh
        print(f"  batch {batch}: selected experts take {100 * share:.1f}% of its routed pairs (map "
              f"{100 * report['routed_share']['map']:.1f}%; {100 * fresh:.1f}% on fresh random blocks)", flush=True)
        model.train()
        report["floor"][batch] = floor = train_measure(model, ids, device, warmup, reps, floor_step(model, ids),
                                                       resident=model_bytes)
        print(f"  floor batch {batch}: {floor}", flush=True)
        with trainable_experts(model, layout, emap) as params:
            report["teft"][batch] = result = train_measure(model, ids, device, warmup, reps,
                                                           teft_step(model, params, ids),
                                                           resident=model_bytes + resident_bytes(params))
        model.eval()
        if "time_s" in result and "time_s" in floor:
            result["time_vs_floor"] = result["time_s"] / floor["time_s"]
            if result.get("peak_bytes") and floor.get("peak_bytes"):
                result["peak_vs_floor"] = result["peak_bytes"] / floor["peak_bytes"]
                # the issue's memory target: the floor plus the slices' fp32 weights, grads, AdamW state, 2 GiB
                result["peak_budget_bytes"] = floor["peak_bytes"] + TEFT_BYTES_PER_PARAM * trainable + 2 * GIB
        print(f"  teft batch {batch}: {result}", flush=True)

    # Proof-of-Loss: one submission scored on pol_blocks x seq validation tokens
    valid = tokens(args.pol_blocks)
    batches = [valid[i:i + route_batch] for i in range(0, args.pol_blocks, route_batch)]
    state = {k: v + 1e-3 for k, v in extract_state(model, layout, emap).items()}
    pol = attempt("Proof-of-Loss", lambda: timed(lambda: state_loss(model, layout, state, batches), device, 1,
                                                 max(1, reps // 2)), device)
    if "time_s" in pol:
        pol["tokens_per_s"] = valid.numel() / pol["time_s"]
    report["pol"] = pol

    total = layout.param_counts["total"]
    optimizer = {"optimizer": f"AdamW on the {args.dtype} weights: {args.dtype} gradients and moments",
                 "bytes_per_param": FULL_FT_BYTES_PER_PARAM[args.dtype],
                 # like for like with TEFT: the weights plus fp32 masters, gradients and moments for every parameter
                 "fp32_masters_state_bytes": total * (dtype.itemsize + TEFT_BYTES_PER_PARAM)}

    def full_ft():
        ids = route_blocks[:1]
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        model.train()

        def make():
            for p in params:
                p.grad = None
            optimizer = torch.optim.AdamW(params, lr=1e-5)

            def step():
                loss = lm_loss(model, ids)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            return step
        try:
            result = timed(make(), device, 1, max(1, reps // 2))
            if not device.startswith("cuda"):
                clear(device)
                result["peak_bytes"] = model_bytes + allocation_peak(lambda: [s() for s in [make()] * 2])
            result["tokens_per_s"] = ids.numel() / result["time_s"]
            return result
        finally:
            for p in params:
                p.grad = None
                p.requires_grad_(False)
            model.eval()

    if args.no_full_ft:
        report["full_finetune_batch1"] = {"error": "not run (--no-full-ft)", **optimizer}
    else:
        report["full_finetune_batch1"] = {**attempt("full fine-tuning, batch 1", full_ft, device), **optimizer}
    return report


def _fmt_time(r: dict) -> str:
    if "error" in r:
        return r["error"]
    return f"{r['time_s']:.3f} s" + (" (ckpt)" if r.get("checkpointing") else "")


def _fmt_mem(r: dict) -> str:
    if "error" in r or r.get("peak_bytes") is None:
        return "—"
    return f"{r['peak_bytes'] / GIB:.1f} GiB" if r["peak_bytes"] >= GIB else f"{r['peak_bytes'] / 2**20:.1f} MiB"


def markdown(report: dict) -> str:
    """The table for the README: every figure next to the floor it is compared with."""
    seq = report["seq_len"]
    load = report["load"]
    layers = f", {report['layers']} layers" if report.get("layers") else ""
    lines = [f"### {report['shape']}{layers} on {report['device']} ({report['dtype']}, seq {seq})", ""]
    if "error" in load:
        return "\n".join(lines + [f"load: {load['error']}", ""])
    total = load["params"]["total"]
    params = f"{total / 1e9:.2f} B" if total >= 1e9 else f"{total / 1e6:.2f} M"
    sel = report.get("selection", {})
    lines += [f"{params} parameters ({load['bytes'] / GIB:.1f} GiB); TEFT trains {sel.get('selected', '?')} of "
              f"{sel.get('total', '?')} routed experts ({sel.get('trainable_params', 0) / 1e6:.1f} M parameters, "
              f"top-p {report['top_p']})", "",
              "The floor is the cheapest correct step: the same chunked loss, backward through every layer, no "
              "weight gradient.", ""]
    share = report.get("routed_share")
    if share:
        per = ", ".join(f"batch {b}: {100 * v:.1f}%" for b, v in share["train_batch"].items())
        fresh = ", ".join(f"{100 * v:.1f}%" for v in share["fresh_random_batch"].values())
        lines += [f"Selected experts' share of routed (token, expert) pairs: {100 * share['map']:.1f}% on the blocks "
                  f"the map was routed on; in each training batch (taken from those blocks) {per}; on fresh random "
                  f"blocks {fresh}.", ""]
    lines += ["| measurement | TEFT | floor | ratio |", "|---|---|---|---|"]
    for batch, teft in report.get("teft", {}).items():
        floor = report["floor"][batch]
        ratio = f"{teft['time_vs_floor']:.2f}x" if "time_vs_floor" in teft else "—"
        lines.append(f"| train step, batch {batch} x {seq} | {_fmt_time(teft)} | {_fmt_time(floor)} | {ratio} |")
        mem_ratio = f"{teft['peak_vs_floor']:.2f}x" if "peak_vs_floor" in teft else "—"
        budget = (f" (budget {teft['peak_budget_bytes'] / GIB:.1f} GiB)" if "peak_budget_bytes" in teft else "")
        lines.append(f"| peak memory, batch {batch} | {_fmt_mem(teft)}{budget} | {_fmt_mem(floor)} | {mem_ratio} |")
        if "tokens_per_s" in teft:
            lines.append(f"| tokens/s, batch {batch} | {teft['tokens_per_s']:,.0f} | "
                         f"{floor.get('tokens_per_s', 0):,.0f} | |")
    fwd = report.get("forward", {})
    for key, label in (("routing", "routing for select, tokens/s"), ("pol", "Proof-of-Loss forward, tokens/s")):
        r = report.get(key, {})
        if "tokens_per_s" in r and "tokens_per_s" in fwd:
            lines.append(f"| {label} | {r['tokens_per_s']:,.0f} | {fwd['tokens_per_s']:,.0f} (plain forward) | "
                         f"{r['tokens_per_s'] / fwd['tokens_per_s']:.2f}x |")
    if "time_s" in report.get("pol", {}):
        lines.append(f"| Proof-of-Loss per submission ({report.get('pol_blocks', 64)} x {seq} tokens) | "
                     f"{report['pol']['time_s']:.2f} s | | |")
    if "payload_bytes" in report:
        pb = report["payload_bytes"]
        lines.append(f"| payload per submission | {pb['bfloat16'] / 2**20:.1f} MiB bf16, "
                     f"{pb['float32'] / 2**20:.1f} MiB fp32 | {load['bytes'] / 2**20:,.0f} MiB (whole model) | "
                     f"{pb['bfloat16'] / load['bytes']:.3f} |")
    full = report.get("full_finetune_batch1")
    if full is not None:
        like = full.get("fp32_masters_state_bytes")
        lines.append(f"| full fine-tuning, batch 1 x {seq}: {full.get('optimizer', 'AdamW')} "
                     f"({full.get('bytes_per_param', '?')} B/param; TEFT: fp32 masters, gradients and moments, "
                     f"{TEFT_BYTES_PER_PARAM} B/param) | {_fmt_time(full)}, {_fmt_mem(full)} | | |")
        if like:
            lines.append(f"| full fine-tuning like TEFT (fp32 masters, gradients, moments): weights and optimizer "
                         f"state alone | {like / GIB:.1f} GiB | | |")
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", required=True, help="a name under configs/shapes/ (e.g. olmoe-1b-7b, tiny)")
    parser.add_argument("--batch-sizes", default="1,4,8", help="comma-separated batch sizes (default 1,4,8)")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (default 1024)")
    parser.add_argument("--top-p", type=float, default=0.2, help="TEFT selection budget (default 0.2)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights (default bf16)")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default auto)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads when on CPU (default 1)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5, --quick 2)")
    parser.add_argument("--pol-blocks", type=int, default=64, help="blocks a Proof-of-Loss judgement scores (64)")
    parser.add_argument("--layers", type=int, default=None,
                        help="keep only the first N decoder layers, at full width (e.g. 2 on a CPU)")
    parser.add_argument("--no-full-ft", action="store_true",
                        help="skip full fine-tuning (its AdamW state alone is 3x the weights)")
    parser.add_argument("--quick", action="store_true", help="CI size: batch 1,2 x 64 tokens, fewer repetitions")
    parser.add_argument("--out", default="runs/bench_gpu", help="output folder for SHAPE.json and SHAPE.md")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.seq_len = "1,2", min(args.seq_len, 64)
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b]
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.shape).stem + (f"-{args.layers}layers" if args.layers else "")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (out / f"{stem}.md").write_text(table)
    print(table)
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
