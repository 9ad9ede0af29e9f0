"""Forgetting trade-off: at matched target-domain loss, does TEFT drift less on general text than full FT?

Every method trains on the same math batches (same seed, steps and batch size) over a learning-rate sweep,
starting each time from the same base weights (kept in memory and loaded back, never re-read from disk):

- ``full``: every parameter trainable (AdamW);
- ``esft-token``, ``esft-gate``, ``des`` (optionally ``METHOD@TOP_P`` for another budget): only the
  selected routed experts trainable (teft.train.train_experts);
- WiSE-FT: for the lowest-math-loss full-FT run and the lowest-math-loss TEFT run, the interpolations
  ``(1-a)*base + a*trained`` for a in --wise-alphas (no extra training).

After each run it evaluates fixed validation subsets of math (target), general, code and legal and records
drift = general loss - base general loss. Writes ``tradeoff.json`` (every run), ``tradeoff.png`` (math
loss against general drift, one curve per method) and ``tradeoff.md`` (drift of each method interpolated
along its sweep at matched math losses, plus a verdict), and prints the table.

    python scripts/tradeoff.py --model tiny --out runs/tradeoff
    python scripts/tradeoff.py --quick --out /tmp/tradeoff      # a smoke run of well under a minute
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from teft.selection import METHODS as TEFT_METHODS  # noqa: E402

DOMAINS = ("math", "general", "code", "legal")  # math is the target; the others measure forgetting
DEFAULT_METHODS = "full,esft-token,esft-gate,des,des@0.5"
DEFAULT_LRS_FULL = "1e-5,3e-5,1e-4,3e-4"
DEFAULT_LRS_TEFT = "3e-4,1e-3,3e-3,1e-2"
EVAL_SEED = "tradeoff-eval"
EVAL_BATCH = 16
QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)
TIE_NATS = 0.005  # general-drift differences smaller than this are reported as ties


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise SystemExit(f"{flag} takes a comma list of numbers, got '{text}'") from err
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise SystemExit(f"{flag} needs positive finite numbers, got '{text}'")
    return values


def parse_methods(text: str, default_top_p: float) -> list[tuple[str, str, float | None]]:
    """'full,esft-token,des@0.5' -> [(label, method, top_p)]."""
    out = []
    for spec in (s.strip() for s in text.split(",")):
        if not spec:
            continue
        method, _, budget = spec.partition("@")
        if method == "full":
            if budget:
                raise SystemExit("method 'full' takes no @budget")
            out.append(("full", "full", None))
            continue
        if method not in TEFT_METHODS:
            raise SystemExit(f"unknown method '{method}' in --methods; use full or one of "
                             f"{', '.join(TEFT_METHODS)}, optionally METHOD@TOP_P")
        try:
            top_p = float(budget) if budget else default_top_p
        except ValueError as err:
            raise SystemExit(f"bad budget in '{spec}': write METHOD@TOP_P, e.g. des@0.5") from err
        if not 0 < top_p <= 1:
            raise SystemExit(f"top-p in '{spec}' must be in (0, 1]")
        out.append((f"{method}@{top_p:g}", method, top_p))
    if not out:
        raise SystemExit("--methods is empty")
    labels = [label for label, _, _ in out]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"--methods lists a method twice: {text}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="model directory or 'tiny' (default tiny)")
    p.add_argument("--data", default="math", help="target-domain corpus to fine-tune on (default math)")
    p.add_argument("--general-data", default="general",
                   help="general corpus: drift reference and DES's general routing profile (default general)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per run (default 200)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--block-size", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--eval-blocks", type=int, default=48,
                   help="validation blocks per domain, a fixed seeded subset (default 48)")
    p.add_argument("--profile-blocks", type=int, default=128,
                   help="train blocks routed to build the selection profiles (default 128)")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma list of full, esft-token, esft-gate, des; METHOD@TOP_P sets a TEFT budget "
                        f"(default {DEFAULT_METHODS})")
    p.add_argument("--top-p", type=float, default=0.2, help="TEFT budget when a method has no @TOP_P (default 0.2)")
    p.add_argument("--lrs-full", default=DEFAULT_LRS_FULL,
                   help=f"comma list of full-FT learning rates (default {DEFAULT_LRS_FULL})")
    p.add_argument("--lrs-teft", default=DEFAULT_LRS_TEFT,
                   help=f"comma list of TEFT learning rates (default {DEFAULT_LRS_TEFT})")
    p.add_argument("--wise-alphas", default="0.25,0.5,0.75",
                   help="WiSE-FT alphas for the best full and best TEFT run; empty to skip (default 0.25,0.5,0.75)")
    p.add_argument("--warmup-frac", type=float, default=0.05,
                   help="share of the steps used for linear warmup before cosine decay (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="batch order and torch seed, the same for every run (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", default="runs/tradeoff", help="output folder (default runs/tradeoff)")
    p.add_argument("--render-only", action="store_true",
                   help="train nothing: re-read OUT/tradeoff.json and rewrite the tables, verdict, PNG and markdown")
    p.add_argument("--quick", action="store_true",
                   help="smoke run for tests: 4 steps, one lr per method, 4 eval blocks, 8 profile blocks")
    return p


# ----------------------------------------------------------------------------- measuring


def eval_losses(model, eval_sets: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    from teft.pol import mean_loss

    return {name: mean_loss(model, batches) for name, batches in eval_sets.items()}


def record(label: str, method: str, top_p, lr, losses: dict[str, float], base: dict[str, float] | None,
           **extra) -> dict:
    row = {"label": label, "method": method, "top_p": top_p, "lr": lr}
    for name, value in losses.items():
        row[f"{name}_loss"] = value
    row["general_ppl"] = math.exp(losses["general"])
    ref = base if base is not None else losses
    row["drift"] = losses["general"] - ref["general"]
    row["drift_ppl"] = row["general_ppl"] - math.exp(ref["general"])
    row["drift_ppl_pct"] = 100.0 * (math.exp(row["drift"]) - 1.0)
    for name in losses:
        if name not in ("math", "general"):
            row[f"{name}_drift"] = losses[name] - ref[name]
    row["math_gain"] = ref["math"] - losses["math"]
    row.update(extra)
    return row


# ----------------------------------------------------------------------------- matched-loss analysis


def curve_points(rows: list[dict], label: str, key: str = "drift") -> list[tuple[float, float, float]]:
    """(math loss, drift, sweep position) of one curve, in sweep order (lr, or WiSE alpha)."""
    pts = [r for r in rows if r["curve"] == label]
    pts.sort(key=lambda r: r["order"])
    return [(r["math_loss"], r[key], r["order"]) for r in pts]


def drift_at(points: list[tuple[float, float, float]], target: float) -> float | None:
    """Drift where the piecewise-linear sweep curve crosses math loss `target` (least drift if it crosses
    more than once); None when the curve never reaches that loss."""
    found = []
    for (x0, y0, _), (x1, y1, _) in zip(points, points[1:], strict=False):
        lo, hi = min(x0, x1), max(x0, x1)
        if not lo - 1e-12 <= target <= hi + 1e-12:
            continue
        if hi - lo < 1e-12:
            found.append(min(y0, y1))
        else:
            found.append(y0 + (target - x0) / (x1 - x0) * (y1 - y0))
    found += [y for x, y, _ in points if abs(x - target) < 1e-12]
    return min(found) if found else None


def shared_range(ranges: dict, full_curves: list, teft_curves: list) -> tuple[float, float] | None:
    """Math losses reached both by a full-FT curve and by a TEFT curve (as one interval), or None."""
    full = [ranges[c] for c in full_curves if c in ranges]
    teft = [ranges[c] for c in teft_curves if c in ranges]
    if not full or not teft:
        return None
    lo = max(min(r[0] for r in full), min(r[0] for r in teft))
    hi = min(max(r[1] for r in full), max(r[1] for r in teft))
    return (lo, hi) if hi >= lo else None


def matched_table(rows: list[dict], curves: list[str], full_curve: str | None, teft_curves: list[str],
                  wise_full: str | None = None, wise_teft: str | None = None, key: str = "drift"):
    """Targets spread over the math-loss range full FT shares with the TEFT sweeps (falling back to the
    WiSE curves when the plain sweeps do not overlap); drift per curve at each target."""
    ranges = {c: (min(p[0] for p in curve_points(rows, c)), max(p[0] for p in curve_points(rows, c)))
              for c in curves if curve_points(rows, c)}
    span = shared_range(ranges, [full_curve], teft_curves)
    if span is None or span[1] - span[0] < 1e-9:
        span = shared_range(ranges, [full_curve, wise_full], list(teft_curves) + [wise_teft]) or span
    if span is None:
        targets = []
    elif span[1] - span[0] < 1e-9:
        targets = [span[0]]
    else:
        targets = [span[0] + q * (span[1] - span[0]) for q in QUANTILES]
    table = {c: [drift_at(curve_points(rows, c, key), t) for t in targets] for c in curves}
    return targets, table, ranges


def _best(table, curves, i):
    """(least drift, curve) among curves that reach target i, or None."""
    found = [(table[c][i], c) for c in curves if c in table and table[c][i] is not None]
    return min(found) if found else None


def _compare(targets, table, full_curves, teft_curves) -> list[tuple[float, float, str, float, str]]:
    """Per target both sides reach: (target, best full drift, its curve, best TEFT drift, its curve)."""
    out = []
    for i, t in enumerate(targets):
        full, teft = _best(table, full_curves, i), _best(table, teft_curves, i)
        if full is not None and teft is not None:
            out.append((t, full[0], full[1], teft[0], teft[1]))
    return out


def verdict(targets, table, full_curve, teft_curves, wise_full, wise_teft) -> str:
    """Does a TEFT variant reach the same math loss with less general drift than full FT? Differences
    within TIE_NATS of general loss are called ties rather than wins."""
    if not targets or full_curve not in table:
        return ("Verdict: no math loss is reached by both full FT and a TEFT variant in this sweep, so no "
                "matched comparison is possible; widen --lrs-full/--lrs-teft.")
    plain = _compare(targets, table, [full_curve], teft_curves)
    if not plain:
        head = "Verdict: the plain TEFT and full-FT sweeps never reach the same math loss (no matched comparison)."
    else:
        margins = [f - t for _, f, _, t, _ in plain]  # > 0: TEFT drifts less
        wins = sum(m > TIE_NATS for m in margins)
        losses = sum(m < -TIE_NATS for m in margins)
        n = len(plain)
        detail = "; ".join(f"math {t:.3f}: full {f:+.4f} vs {name} {d:+.4f}" for t, f, _, d, name in plain)
        if wins == n:
            word = "YES"
            what = f"a TEFT variant drifts less on general text than full FT at all {n} matched math losses"
        elif losses == n:
            word = "NO"
            what = (f"no TEFT variant drifts less than full FT at any of the {n} matched math losses; "
                    f"the best TEFT variant drifts {min(-m for m in margins):.4f} to {max(-m for m in margins):.4f} "
                    "nats more")
        elif wins == 0:
            word = "NO"
            what = (f"no TEFT variant beats full FT by more than {TIE_NATS} nats at any of the {n} matched "
                    f"math losses ({losses} losses, {n - losses} ties)")
        else:
            word = "MIXED"
            what = (f"a TEFT variant drifts less than full FT at {wins} of {n} matched math losses "
                    f"({losses} losses, {n - wins - losses} ties within {TIE_NATS} nats)")
        head = f"Verdict: {word}: {what} (general drift, best TEFT per target: {detail})."
    if wise_full or wise_teft:
        both = _compare(targets, table, [full_curve, wise_full], list(teft_curves) + [wise_teft])
        if both:
            better = sum(f - t > TIE_NATS for _, f, _, t, _ in both)
            worse = sum(t - f > TIE_NATS for _, f, _, t, _ in both)
            head += (f" Counting WiSE-FT interpolations as operating points too, TEFT drifts less at {better}, "
                     f"more at {worse}, and ties at {len(both) - better - worse} of {len(both)} matched math "
                     f"losses (best full-FT side: {', '.join(sorted({c for _, _, c, _, _ in both}))}).")
    return head


# ----------------------------------------------------------------------------- outputs


def fmt(v, spec=".4f"):
    return "n/r" if v is None else format(v, spec)


def write_markdown(out: Path, args, base: dict, rows: list[dict], targets, table, ranges, curves,
                   verdict_line: str, wall: float, model_label: str, extra: dict | None = None) -> str:
    lines = [
        "# Forgetting trade-off: TEFT vs full fine-tuning",
        "",
        f"Model `{model_label}`, target `{args.data}`, {args.steps} steps x batch {args.batch_size} x "
        f"{args.block_size} tokens (same batches, seed {args.seed}, for every run), eval on {args.eval_blocks} "
        f"validation blocks per domain. Base: math {base['math_loss']:.4f}, general {base['general_loss']:.4f} "
        f"(ppl {base['general_ppl']:.3f}). Drift = general validation loss - base general loss (nats; "
        "exp(drift)-1 is the relative perplexity increase). Total wall time {:.0f} s.".format(wall),
        "",
        "## General drift at matched math loss",
        "",
        "Each cell interpolates linearly along that method's sweep curve (learning rates in order; WiSE "
        "curves: alpha 0 = base .. 1 = trained run). `n/r`: the curve never reaches that math loss "
        "(its range is in the last column).",
        "",
    ]
    header = "| curve | " + " | ".join(f"math {t:.3f}" for t in targets) + " | math range reached |"
    lines += [header, "|" + "---|" * (len(targets) + 2)]
    for c in curves:
        lo, hi = ranges.get(c, (float("nan"), float("nan")))
        lines.append(f"| {c} | " + " | ".join(fmt(v, "+.4f") for v in table[c]) + f" | {lo:.3f} .. {hi:.3f} |")
    if not targets:
        lines.append("\n(no math loss is shared by full FT and a TEFT curve)")
    lines += ["", verdict_line]
    for name, sub in (extra or {}).items():
        lines += ["", f"### {name.capitalize()} drift at the same matched math losses (secondary)", "",
                  "| curve | " + " | ".join(f"math {t:.3f}" for t in targets) + " |",
                  "|" + "---|" * (len(targets) + 1)]
        lines += [f"| {c} | " + " | ".join(fmt(v, "+.4f") for v in sub[c]) + " |" for c in curves]
    lines += ["", "## Every run", "",
              "| run | lr / alpha | experts | trainable params | math | general | drift | general ppl | "
              "code | legal | train s |", "|" + "---|" * 11]
    for r in rows:
        knob = (f"a={r['alpha']:g}" if r.get("alpha") is not None else
                (f"{r['lr']:.0e}" if r.get("lr") else "-"))
        lines.append(
            f"| {r['label']} | {knob} | {r.get('experts', '-')} | {r.get('trainable_params', 0):,} | "
            f"{r['math_loss']:.4f} | {r['general_loss']:.4f} | {r['drift']:+.4f} | {r['general_ppl']:.3f} | "
            f"{r['code_loss']:.4f} | {r['legal_loss']:.4f} | {r.get('train_seconds', 0):.1f} |")
    text = "\n".join(lines) + "\n"
    (out / "tradeoff.md").write_text(text)
    return text


def plot(out: Path, base: dict, rows: list[dict], curves: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=120)
    markers = {"full": "s", "esft-token": "o", "esft-gate": "^", "des": "D"}
    colors = plt.get_cmap("tab10")
    sweeps = [c for c in curves if not c.endswith("+WiSE")]
    for c in curves:
        pts = sorted((r for r in rows if r["curve"] == c), key=lambda r: r["order"])
        if not pts:
            continue
        wise = c.endswith("+WiSE")
        method = pts[-1]["method"]
        xs = [r["math_loss"] for r in pts]
        ys = [r["drift"] for r in pts]
        source = c[: -len("+WiSE")] if wise else c
        color = colors((sweeps.index(source) if source in sweeps else len(sweeps)) % 10)
        if wise:
            mids = "/".join(format(r["alpha"], "g") for r in pts if 0 < r["alpha"] < 1)
            ax.plot(xs, ys, linestyle="--", marker="x", color=color, linewidth=1.3, markersize=7,
                    label=f"{c}: base -> alpha {mids} -> its run (lr {pts[-1]['lr']:.0e})")
            for r in pts:
                if 0 < r["alpha"] < 1:
                    ax.annotate(f"a={r['alpha']:g}", (r["math_loss"], r["drift"]), textcoords="offset points",
                                xytext=(5, -11), fontsize=7, color=color)
        else:
            ax.plot(xs, ys, linestyle="-", marker=markers.get(method, "o"), color=color, linewidth=1.8,
                    markersize=7, label=f"{c} (lr sweep)")
            for r in pts:
                ax.annotate(f"{r['lr']:.0e}", (r["math_loss"], r["drift"]), textcoords="offset points",
                            xytext=(5, 4), fontsize=7, color=color)
    ax.plot([base["math_loss"]], [0.0], marker="*", color="black", markersize=16, linestyle="none",
            label=f"base model (math {base['math_loss']:.3f}, general ppl {base['general_ppl']:.2f})")
    ax.axhline(0.0, color="grey", linewidth=0.7, linestyle=":")
    ax.set_xlabel("math validation loss (nats/token, lower = better adapted)  ->  better is left")
    ax.set_ylabel("general drift: general val loss - base (nats)  ->  better is down")
    sec = ax.secondary_yaxis("right", functions=(lambda d: 100 * (np.exp(d) - 1),
                                                 lambda p: np.log1p(np.asarray(p) / 100)))
    sec.set_ylabel("general perplexity increase (%)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(out / "tradeoff.png")
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.render_only:
        path = Path(args.out) / "tradeoff.json"
        if not path.is_file():
            raise SystemExit(f"--render-only needs {path}; run the study first")
        render(json.loads(path.read_text()), Path(args.out))
        return
    if args.quick:
        args.steps, args.eval_blocks, args.profile_blocks = 4, 4, 8
        args.lrs_full, args.lrs_teft = "1e-3", "3e-3"
    if args.steps < 1 or args.batch_size < 1 or args.eval_blocks < 1 or args.profile_blocks < 1:
        raise SystemExit("--steps, --batch-size, --eval-blocks and --profile-blocks must be positive")
    torch.set_num_threads(max(1, args.threads))
    methods = parse_methods(args.methods, args.top_p)
    lrs_full = parse_floats(args.lrs_full, "--lrs-full")
    lrs_teft = parse_floats(args.lrs_teft, "--lrs-teft")
    alphas = [float(a) for a in args.wise_alphas.split(",") if a.strip()] if args.wise_alphas else []
    if any(not 0 < a < 1 for a in alphas):
        raise SystemExit("--wise-alphas must lie strictly between 0 and 1")

    from tqdm import tqdm

    from teft.data import iterate_batches, load_texts, subset, tokenize_blocks
    from teft.integrate import apply_state
    from teft.model import discover_layout, load_model
    from teft.routing import routing_profile
    from teft.selection import ExpertMap, select_experts
    from teft.state import extract_state
    from teft.train import TrainConfig, train_experts, train_loop

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(args.model)
    if tokenizer is None:
        raise SystemExit(f"model '{args.model}' ships no tokenizer; this study needs one")
    layout = discover_layout(model)
    base_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore() -> None:
        model.load_state_dict(base_sd)
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()

    bs, tok_per_block = args.batch_size, args.block_size
    need = tok_per_block * max(bs * args.steps, args.profile_blocks)
    train_blocks = tokenize_blocks(tokenizer, load_texts(args.data, "train"), tok_per_block, max_tokens=need)
    batches = list(iterate_batches(train_blocks, bs, args.seed, args.steps))
    corpora = {"math": args.data, "general": args.general_data, "code": "code", "legal": "legal"}
    eval_sets = {}
    for name, spec in corpora.items():
        blocks = tokenize_blocks(tokenizer, load_texts(spec, "validation"), tok_per_block,
                                 max_tokens=tok_per_block * max(args.eval_blocks * 8, 512))
        chosen = subset(blocks, EVAL_SEED, args.eval_blocks)
        eval_sets[name] = [chosen[i:i + EVAL_BATCH] for i in range(0, len(chosen), EVAL_BATCH)]

    base_losses = eval_losses(model, eval_sets)
    base = record("base", "base", None, None, base_losses, None, curve="base", order=0, experts=0,
                  trainable_params=0, train_seconds=0.0)

    # selection profiles: routed target-domain train blocks, and general train blocks for DES
    prof_target = routing_profile(model, layout, train_blocks[:args.profile_blocks], bs)
    prof_general = None
    if any(m == "des" for _, m, _ in methods):
        general_blocks = tokenize_blocks(tokenizer, load_texts(args.general_data, "train"), tok_per_block,
                                         max_tokens=tok_per_block * args.profile_blocks)
        prof_general = routing_profile(model, layout, general_blocks, bs)
    maps = {}
    for label, method, top_p in methods:
        if method != "full":
            layers = select_experts(prof_target, method, top_p=top_p, general=prof_general)
            maps[label] = ExpertMap(layers, layout.num_experts, method=method, budget={"top_p": top_p},
                                    tokens=prof_target.tokens)

    plan = [(label, method, top_p, lr) for label, method, top_p in methods
            for lr in (lrs_full if method == "full" else lrs_teft)]
    n_wise = len(alphas) * (int(any(m == "full" for _, m, _ in methods)) +
                            int(any(m != "full" for _, m, _ in methods)))
    rows: list[dict] = []
    trained: dict[int, dict] = {}  # row index -> trained weights (full state_dict or expert state)
    bar = tqdm(total=len(plan) + n_wise, desc="tradeoff runs", unit="run")
    for label, method, top_p, lr in plan:
        bar.set_postfix_str(f"{label} lr={lr:.0e}")
        restore()
        cfg = TrainConfig(steps=args.steps, lr=lr, warmup_steps=int(args.warmup_frac * args.steps),
                          seed=args.seed)
        t0 = time.perf_counter()
        if method == "full":
            params = list(model.parameters())
            for p in params:
                p.requires_grad_(True)
            result = train_loop(model, params, batches, cfg)
            for p in params:
                p.requires_grad_(False)
            experts = layout.num_experts * len(layout.layers)
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            emap = maps[label]
            result = train_experts(model, layout, emap, batches, cfg)
            experts = emap.count
            weights = extract_state(model, layout, emap)
        train_s = time.perf_counter() - t0
        losses = eval_losses(model, eval_sets)
        tail = result.losses[-10:]
        row = record(label, method, top_p, lr, losses, base_losses, curve=label, order=lr, experts=experts,
                     trainable_params=result.trainable_params, train_seconds=train_s,
                     final_train_loss=sum(tail) / len(tail), steps=args.steps,
                     tokens=args.steps * bs * tok_per_block,
                     wall_seconds=time.perf_counter() - t0)
        if method != "full":
            row["selected"] = {str(k): v for k, v in sorted(maps[label].layers.items())}
        trained[len(rows)] = weights
        rows.append(row)
        bar.update(1)

    # WiSE-FT: interpolate the lowest-math-loss full run and the lowest-math-loss TEFT run toward the base
    wise_curves = []
    for family in ("full", "teft"):
        pool = [i for i, r in enumerate(rows) if (r["method"] == "full") == (family == "full")
                and math.isfinite(r["math_loss"])]
        if not pool or not alphas:
            continue
        best = min(pool, key=lambda i: rows[i]["math_loss"])
        src = rows[best]
        curve = f"{src['label']}+WiSE"
        wise_curves.append(curve)
        for alpha in alphas:
            bar.set_postfix_str(f"WiSE {src['label']} a={alpha:g}")
            restore()
            t0 = time.perf_counter()
            if family == "full":
                mixed = {k: ((1 - alpha) * base_sd[k].float() + alpha * v.float()).to(base_sd[k].dtype)
                         if v.is_floating_point() else v for k, v in trained[best].items()}
                model.load_state_dict(mixed)
            else:
                apply_state(model, layout, trained[best], "wise", alpha)
            losses = eval_losses(model, eval_sets)
            rows.append(record(curve, src["method"], src["top_p"], src["lr"], losses, base_losses, curve=curve,
                               order=alpha, alpha=alpha, source_label=src["label"], source_lr=src["lr"],
                               experts=src["experts"], trainable_params=src["trainable_params"],
                               train_seconds=0.0, wall_seconds=time.perf_counter() - t0))
            bar.update(1)
    bar.close()
    wall = time.perf_counter() - started

    report = {
        "model": str(args.model), "data": args.data, "general_data": args.general_data,
        "steps": args.steps, "batch_size": bs, "block_size": tok_per_block, "eval_blocks": args.eval_blocks,
        "seed": args.seed, "lrs_full": lrs_full, "lrs_teft": lrs_teft, "wise_alphas": alphas,
        "quick": args.quick, "threads": args.threads, "wall_seconds": wall,
        "param_counts": layout.param_counts, "base": base,
        "methods": [label for label, _, _ in methods], "wise_curves": wise_curves,
        "runs": rows,
    }
    render(report, out)


def with_endpoints(report: dict) -> list[dict]:
    """The runs plus, for each WiSE curve, its alpha-0 (base) and alpha-1 (trained run) end points."""
    rows = list(report["runs"])
    for curve in report["wise_curves"]:
        mid = [r for r in rows if r["curve"] == curve]
        if not mid:
            continue
        src = next(r for r in rows if r["curve"] == mid[0]["source_label"] and r["lr"] == mid[0]["source_lr"]
                   and r.get("alpha") is None)
        for alpha, point in ((0.0, report["base"]), (1.0, src)):
            rows.append(dict(point, curve=curve, order=alpha, alpha=alpha, label=curve, method=src["method"],
                             source_label=src["label"], source_lr=src["lr"], wise_endpoint=True))
    return rows


def render(report: dict, out: Path) -> None:
    """Matched-loss tables, verdict, tradeoff.json / .png / .md from a finished (or re-read) report."""
    rows = with_endpoints(report)
    sweep_curves, wise_curves = report["methods"], report["wise_curves"]
    curves = sweep_curves + wise_curves
    full_curve = "full" if "full" in sweep_curves else None
    teft_curves = [c for c in sweep_curves if c != "full"]
    wise_full = next((c for c in wise_curves if c.startswith("full+")), None)
    wise_teft = next((c for c in wise_curves if not c.startswith("full+")), None)
    picks = (full_curve, teft_curves, wise_full, wise_teft)
    targets, table, ranges = matched_table(rows, curves, *picks)
    extra = {name: matched_table(rows, curves, *picks, key=f"{name}_drift")[1] for name in ("code", "legal")
             if all(f"{name}_drift" in r for r in rows)}
    verdict_line = verdict(targets, table, *picks)
    report["matched"] = {"targets": targets, "drift": table, "ranges": {c: list(v) for c, v in ranges.items()},
                         **{f"{name}_drift": sub for name, sub in extra.items()}}
    report["verdict"] = verdict_line
    out.mkdir(parents=True, exist_ok=True)
    (out / "tradeoff.json").write_text(json.dumps(report, indent=2) + "\n")
    args = argparse.Namespace(**{k: report[k] for k in ("data", "steps", "batch_size", "block_size", "seed",
                                                          "eval_blocks")})
    title = (f"Forgetting trade-off on {report['data']}: {report['model']}, {report['steps']} steps x "
             f"{report['batch_size']}x{report['block_size']} tokens per run\n"
             "(TEFT = selected routed experts only; full = all parameters; same batches)")
    base = report["base"]
    plot(out, base, rows, curves, title)
    text = write_markdown(out, args, base, report["runs"], targets, table, ranges, curves, verdict_line,
                          report["wall_seconds"], report["model"], extra)
    start = text.index("## General drift")
    print(text[start:text.index("### ") if extra else text.index("## Every run")].rstrip())
    print(f"\nwrote {out / 'tradeoff.json'}, {out / 'tradeoff.png'}, {out / 'tradeoff.md'} "
          f"(study wall time {report['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
