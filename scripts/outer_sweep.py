"""Does the swarm turn more miners into faster progress? The swarm's cycle without the network, in-process.

M simulated miners train from the same state, each on its own batches (seeded by miner and cycle, as
swarm/miner.py does); a validator's Proof-of-Loss score on the cycle's validation subset ranks them, the
swarm's own rule (`swarm.protocol.consensus.combine`: top_k, min_relative_score) picks the merged ones and the outer
step (`teft.outer`) applies them. Each row is compared with a lone miner (one miner, H steps per cycle, the
same inner loop) on target loss per cycle, the speedup (swarm.sim.report.SPEEDUP_DEFINITION: cycles each needs
to first reach a loss, interpolated) and general drift (general loss minus the base model's).

Phases (each appends rows to the JSON, so a phase can be re-run alone):
  variants  M=4, H=20: inner moments kept vs reset, cross-cycle vs per-cycle lr schedule, outer lr/momentum,
            score-weighted vs uniform merge, top_k < M; picks the variant with the lowest final target loss
  outer     more outer lr/momentum pairs (--outer) on the --chosen variant
  lr        a larger inner lr (--inner-lr) on the --chosen variant, at M=4 and M=1
  miners    the chosen variant at M = 1, 2, 8 (M = 4 is the variants row), plus dense DiLoCo and full
            fine-tuning at M = 4 for the forgetting comparison
  horizon   the chosen variant at H = 50, 100 (M = 2, 2 cycles against a 3-cycle lone miner)
  codecs    the manifest's own inner and outer loop at M=4 with each payload codec (--codecs) and error
            feedback, per seed (--seeds: each seed its own miner batches and Proof-of-Loss subsets): bytes per
            miner per cycle, speedup over a lone miner of the same seed, general drift at the final target loss
            against fp32's at that loss; writes <out>.md and a plot of target loss against bytes sent (<out>.png)

    python scripts/outer_sweep.py --threads 1 --out teft/assets/studies/outer_sweep
    python scripts/outer_sweep.py --threads 1 --phases codecs --cycles 4 --seeds 0 1 2 --out teft/assets/studies/codecs
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from swarm.protocol.consensus import Score, combine  # noqa: E402
from swarm.protocol.runtime import Runtime, report_batches  # noqa: E402
from swarm.sim.baseline import InnerPlan, dense_diloco, lone_miner, miner_cycle, token_budget  # noqa: E402
from swarm.sim.report import SPEEDUP_DEFINITION, _interp_drift, speedup  # noqa: E402
from teft.codec import Codec, CodecSpec, apply_delta  # noqa: E402
from teft.data import subset  # noqa: E402
from teft.outer import NesterovOuter, OuterConfig, merge, outer_step, pseudo_gradient  # noqa: E402
from teft.pol import score, state_loss  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One way to run the inner and outer loops."""

    name: str
    keep_moments: bool = False
    schedule: str = "cycle"
    outer_lr: float = 1.0
    momentum: float = 0.0
    weighted: bool = False
    top_k: int | None = None  # None: every miner (M)
    inner_lr: float | None = None  # None: the manifest's


TODAY = Variant("today: reset/cycle, outer 1.0/0.0")
INNER = [TODAY,
         Variant("keep moments", keep_moments=True),
         Variant("keep + run", keep_moments=True, schedule="run")]


def outer_variants(inner: Variant) -> list[Variant]:
    """Outer lr/momentum, weighting and top_k tried on the best inner choice."""
    return [replace(inner, name=f"{inner.name}, outer 1.0/0.5", momentum=0.5),
            replace(inner, name=f"{inner.name}, outer 0.7/0.9 (DiLoCo)", outer_lr=0.7, momentum=0.9),
            replace(inner, name=f"{inner.name}, score-weighted", weighted=True),
            replace(inner, name=f"{inner.name}, top_k 2", top_k=2)]


def load_tiny(config: str) -> Runtime:
    from swarm.launch import write_manifest
    from swarm.net.identity import load_or_create
    from swarm.protocol.manifest import load
    from swarm.protocol.runtime import load_runtime

    with tempfile.TemporaryDirectory() as tmp:
        key = load_or_create(Path(tmp) / "k.key").public_key_str
        return load_runtime(load(write_manifest(config, Path(tmp) / "run.yaml", [key], 0, {"quorum": 1})))


def swarm_run(rt: Runtime, v: Variant, miners: int, cycles: int, steps: int, horizon: int,
              codec: Codec | None = None, prefix: str = "") -> list[dict]:
    """`cycles` cycles of M honest miners, one validator's scores, the swarm's merge rule and outer step.

    With a codec, each miner sends its pseudo-gradient through it with error feedback (its residual carried
    from cycle to cycle, as roles.miner does), and the validator scores, and the outer step merges, exactly the
    decoded deltas. `prefix` names another seed's miners and Proof-of-Loss subsets."""
    plan = InnerPlan(v.keep_moments, v.schedule, horizon)
    target, general = report_batches(rt.validation_blocks), report_batches(rt.general_blocks)
    n_val = rt.manifest.data.validation_blocks
    state, buffer, moments, curve = rt.initial_state, None, [None] * miners, []
    residuals: list = [None] * miners
    for cycle in range(cycles):
        subs = []
        for m in range(miners):
            trained, moments[m], _ = miner_cycle(rt, state, f"{prefix}miner-{m}", cycle, plan, moments[m], steps,
                                                 v.inner_lr)
            if codec is not None:
                _, sent, residuals[m] = codec.compress(pseudo_gradient(state, trained), residuals[m],
                                                       rt.manifest.max_delta_norm)
                trained = apply_delta(state, sent)
                subs.append((trained, sent))
            else:
                subs.append((trained, None))
        pol = report_batches(subset(rt.validation_blocks, f"{prefix}outer-sweep/{cycle}", n_val))
        base_loss = state_loss(rt.model, rt.layout, state, pol)
        losses = [state_loss(rt.model, rt.layout, s, pol) for s, _ in subs]
        entries = [Score(f"miner-{m}", str(m), loss, score(base_loss, loss)) for m, loss in enumerate(losses)]
        decision = combine({"v": entries}, {"v"}, 1, v.top_k or miners, rt.manifest.outer.min_relative_score)
        if decision.merged:
            chosen = [subs[int(m.payload_hash)] for m in decision.merged]
            weights = [m.score for m in decision.merged] if v.weighted else None
            optimizer = NesterovOuter(OuterConfig(v.outer_lr, v.momentum, True), buffer)
            if codec is not None:
                state = optimizer.step(state, merge([d for _, d in chosen], weights))
            else:
                state = outer_step(state, [t for t, _ in chosen], optimizer, weights)
            buffer = optimizer.buffer
        t, g = (state_loss(rt.model, rt.layout, state, b) for b in (target, general))
        curve.append({"cycle": cycle, "target_loss": t, "general_loss": g, "merged": len(decision.merged)})
    return curve


def row(rt: Runtime, base: dict, v: Variant, miners: int, steps: int, cycles: int, lone_cycles: int,
        lone_cache: dict) -> dict:
    """One table row: the swarm's curve, the matching lone miner's, the speedup and the drift."""
    start = time.time()
    key = (v.keep_moments, v.schedule, steps, lone_cycles, v.inner_lr)
    if key not in lone_cache:
        lone_cache[key] = lone_miner(rt, lone_cycles, InnerPlan(v.keep_moments, v.schedule, lone_cycles), steps,
                                     v.inner_lr)
    lone = lone_cache[key]
    curve = swarm_run(rt, v, miners, cycles, steps, lone_cycles)
    per_cycle, headline = speedup(curve, lone, base["target_loss"])
    for p, s in zip(curve, per_cycle, strict=True):
        p["general_drift"] = p["general_loss"] - base["general_loss"]
        p["speedup_vs_lone"] = s
    out = {"variant": asdict(v), "miners": miners, "steps": steps, "cycles": cycles, "curve": curve,
           "lone": lone, "speedup": headline, "seconds": round(time.time() - start, 1)}
    print(f"{v.name} | M={miners} H={steps}: target " + " ".join(f"{p['target_loss']:.3f}" for p in curve)
          + f" | lone {lone_cycles}-cycle {headline['lone_final_target_loss']:.3f}, swarm reaches it after "
          f"{headline['swarm_cycles_to_lone_final']} cycles, speedup {headline['speedup']} | drift "
          f"{curve[-1]['general_drift']:+.3f} [{out['seconds']}s]", flush=True)
    return out


def fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def write_markdown(results: dict, path: Path) -> None:
    base = results["base"]
    lines = ["# Outer-loop study: does the swarm turn more miners into faster progress?", "",
             f"In-process swarm on `{results.get('config', 'configs/tiny.yaml')}` (model `tiny`, target math, inner "
             f"batch {results.get('batch', '8 x 128 tokens')}, inner lr {results.get('inner_lr', 1e-3):g}), honest "
             f"miners only, one validator's Proof-of-Loss scores and the swarm's merge rule. Base model: math "
             f"{base['target_loss']:.4f}, general {base['general_loss']:.4f}. Speedup (lone miner: same H, same "
             f"inner loop): {SPEEDUP_DEFINITION}; per cycle at the swarm's loss after it, the headline column at "
             "the lowest loss both reached. Drift = general loss - base.", "",
             "Commands:", "", *[f"    {c}" for c in results["commands"]], "",
             "| phase | variant | M | H | target loss per cycle | merged per cycle | lone miner final (cycles) | "
             "swarm cycles to it | speedup | per-cycle speedup | general drift at end | lone miner's drift at that "
             "target loss |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        c, h = r["curve"], r["speedup"]
        lines.append(f"| {r['phase']} | {r['variant']['name']} | {r['miners']} | {r['steps']} | "
                     + " ".join(f"{p['target_loss']:.3f}" for p in c) + " | "
                     + " ".join(str(p["merged"]) for p in c)
                     + f" | {h['lone_final_target_loss']:.3f} ({h['lone_cycles']}) | "
                     f"{fmt(h['swarm_cycles_to_lone_final'], '.2f')} | {fmt(h['speedup'], '.2f')}x | "
                     + " ".join(fmt(p["speedup_vs_lone"], ".2f") for p in c)
                     + f" | {c[-1]['general_drift']:+.4f} | "
                     f"{fmt(_interp_drift(r['lone'], base, c[-1]['target_loss']), '+.4f')} |")
    forget = results.get("forgetting")
    if forget:
        lines += ["", "## Forgetting at the swarm's final target loss", "",
                  f"Swarm row: {forget['row']}; its final target loss {forget['target_loss']:.4f}. Each curve's "
                  "general drift is interpolated along it at that target loss (`-`: the curve never got there).", "",
                  "| curve | general drift | target loss per cycle |", "|---|---|---|"]
        for name, d in forget["curves"].items():
            lines.append(f"| {name} | {fmt(d['drift_at_swarm_loss'], '+.4f')} | "
                         + " ".join(f"{p['target_loss']:.3f}" for p in d["curve"]) + " |")
    if results.get("chosen"):
        lines += ["", f"Fastest in the variants phase (lowest final target loss; the miners and horizon phases use "
                  f"it): **{results['chosen']}**."]
    if results.get("decision"):
        lines += ["", "## Decision", "", results["decision"]]
    path.write_text("\n".join(lines) + "\n")


TODAY_FP32_PAYLOAD = 923_592  # bytes: the full-width fp32 weights every miner sent per cycle before codecs


def parse_codec(text: str) -> CodecSpec:
    """`name` or `name:key=value,...` (e.g. `sparse:chunk=4096,density=0.015625,bits=2`)."""
    name, _, rest = text.partition(":")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        kwargs[key] = float(value) if key == "density" else int(value)
    return CodecSpec(name, **kwargs)


def manifest_variant(rt: Runtime) -> Variant:
    """The run's own inner and outer loop as a Variant (every miner merged, uniform weights)."""
    inner, outer = rt.manifest.inner, rt.manifest.outer
    return Variant(f"manifest: {'keep' if inner.keep_moments else 'reset'} + {inner.schedule}, outer "
                   f"{outer.lr:g}/{outer.momentum:g}", keep_moments=inner.keep_moments, schedule=inner.schedule,
                   outer_lr=outer.lr, momentum=outer.momentum)


def codec_rows(rt: Runtime, base: dict, specs: list[CodecSpec], seeds: list[int], miners: int, cycles: int,
               lone_cycles: int, done: list[dict], save, outer: tuple[float, float] | None = None) -> list[dict]:
    """One row per (codec, seed): the swarm's curve through that codec, the same seed's lone miner, the speedup
    and the drift; rows already in `done` (same label, seed, M, cycles) are kept, not rerun. `outer`: an outer
    lr and momentum other than the manifest's (the row's label says so)."""
    v, steps = manifest_variant(rt), rt.manifest.inner.steps
    if outer is not None:
        v = replace(v, name=f"{v.name.split(', outer')[0]}, outer {outer[0]:g}/{outer[1]:g}", outer_lr=outer[0],
                    momentum=outer[1])
    suffix = "" if outer is None else f" @ outer {outer[0]:g}/{outer[1]:g}"
    plan = InnerPlan(v.keep_moments, v.schedule, lone_cycles)
    rows = list(done)
    for seed in seeds:
        prefix = "" if seed == 0 else f"s{seed}/"
        lone = None
        for spec in specs:
            label = spec.label() + suffix
            if any(r["codec"] == label and r["seed"] == seed and r["miners"] == miners
                   and r["cycles"] == cycles for r in rows):
                continue
            start = time.time()
            if lone is None:
                lone = next((r["lone"] for r in rows if r["seed"] == seed and len(r["lone"]) == lone_cycles), None) \
                    or lone_miner(rt, lone_cycles, plan, steps, v.inner_lr, miner_id=f"{prefix}miner-0")
            codec = Codec(spec, rt.codec.shapes)
            curve = swarm_run(rt, v, miners, cycles, steps, lone_cycles, codec, prefix)
            per_cycle, headline = speedup(curve, lone, base["target_loss"])
            for p, sp in zip(curve, per_cycle, strict=True):
                p["general_drift"] = p["general_loss"] - base["general_loss"]
                p["speedup_vs_lone"] = sp
                p["bytes_sent_per_miner"] = codec.size * (p["cycle"] + 1)
            rows.append({"codec": label, "settings": spec.settings(), "seed": seed, "miners": miners,
                         "steps": steps, "cycles": cycles, "variant": asdict(v), "bytes_per_miner_per_cycle":
                         codec.size, "curve": curve, "lone": lone, "speedup": headline,
                         "seconds": round(time.time() - start, 1)})
            print(f"{label} seed {seed} | {codec.size:,d} B/miner/cycle: target "
                  + " ".join(f"{p['target_loss']:.3f}" for p in curve) + " merged "
                  + " ".join(str(p["merged"]) for p in curve) + f" | speedup {fmt(headline['speedup'], '.2f')} | "
                  f"drift {curve[-1]['general_drift']:+.3f} [{rows[-1]['seconds']}s]", flush=True)
            save(rows)
    return rows


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def codec_summary(rows: list[dict], base: dict) -> list[dict]:
    """Per codec over its seeds: bytes, speedup (each seed and the mean), its ratio to fp32's, the final target
    loss and general drift, and fp32's drift at that same loss (the same seed's fp32 curve, interpolated)."""
    fp32 = {r["seed"]: r for r in rows if r["codec"] == "fp32"}
    out = []
    for label in dict.fromkeys(r["codec"] for r in rows):
        mine = sorted((r for r in rows if r["codec"] == label), key=lambda r: r["seed"])
        # a swarm that did not reach the lone miner's final loss in its cycles is slower than lone cycles / cycles
        values = [(r["speedup"]["speedup"], r["speedup"]["speedup"] is None) for r in mine]
        values = [(r["speedup"]["lone_cycles"] / r["cycles"], True) if v is None else (v, False)
                  for r, (v, _) in zip(mine, values, strict=True)]
        ratios = [(v / fp32[r["seed"]]["speedup"]["speedup"], bound) for r, (v, bound) in zip(mine, values, strict=True)
                  if r["seed"] in fp32 and fp32[r["seed"]]["speedup"]["speedup"]]
        at_loss = [_interp_drift(fp32[r["seed"]]["curve"], base, r["curve"][-1]["target_loss"])
                   for r in mine if r["seed"] in fp32]
        out.append({"codec": label, "settings": mine[0]["settings"], "seeds": [r["seed"] for r in mine],
                    "bytes": mine[0]["bytes_per_miner_per_cycle"],
                    "fewer_than_today": TODAY_FP32_PAYLOAD / mine[0]["bytes_per_miner_per_cycle"],
                    "speedups": values, "speedup": _mean([v for v, _ in values]),
                    "speedup_bound": any(b for _, b in values),
                    "of_fp32": _mean([x for x, _ in ratios]), "of_fp32_bound": any(b for _, b in ratios),
                    "end_speedup": _mean([r["curve"][-1]["speedup_vs_lone"] for r in mine]),
                    "final_target_loss": _mean([r["curve"][-1]["target_loss"] for r in mine]),
                    "drift": _mean([r["curve"][-1]["general_drift"] for r in mine]),
                    "fp32_drift_at_loss": _mean(at_loss)})
    return out


def write_codec_markdown(results: dict, path: Path) -> None:
    base, rows = results["base"], results["codec_rows"]
    summary = codec_summary(rows, base)
    lines = ["# Payload codecs: what each costs the swarm's progress", "",
             f"In-process swarm on `{results.get('config', 'configs/tiny.yaml')}` (model `tiny`, target math, inner "
             f"batch {results.get('batch')}, inner lr {results.get('inner_lr', 0):g}, H = {rows[0]['steps']}; "
             f"{rows[0]['variant']['name']}), M = {rows[0]['miners']} honest miners, {rows[0]['cycles']} cycles, "
             "each sending its pseudo-gradient through the codec with error feedback (the residual carried from "
             "cycle to cycle; what is sent scaled under `max_delta_norm`), one validator scoring the decoded delta "
             "applied to the cycle's state by Proof-of-Loss, the swarm's merge rule and outer step on the decoded "
             f"deltas. Base model: math {base['target_loss']:.4f}, general {base['general_loss']:.4f}. Speedup = "
             f"cycles a lone miner of the same seed (same inner loop, no codec) needs to reach its "
             f"{rows[0]['lone'][-1]['cycle'] + 1}-cycle loss / the swarm's cycles to reach it (interpolated; `-`: the "
             "swarm did not reach it). Drift = general loss - base. Today's payload: the full-width fp32 weights, "
             f"{TODAY_FP32_PAYLOAD:,d} bytes per miner per cycle.", "",
             "Commands:", "", *[f"    {c}" for c in results["commands"] if "codecs" in c], "",
             "| codec | settings | bytes per miner per cycle | fewer than today's fp32 | speedup per seed | mean "
             "speedup | of fp32's | lone cycles to the final loss / swarm cycles | final target loss | general "
             "drift at end | fp32's drift at that loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        settings = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in r["settings"].items()
                             if k != "codec") or "-"
        below = "<" if r["speedup_bound"] else ""
        lines.append(f"| {r['codec']} | {settings} | {r['bytes']:,d} | {r['fewer_than_today']:.1f}x | "
                     + " ".join(("<" if b else "") + f"{v:.2f}" for v, b in r["speedups"])
                     + f" | {below}{fmt(r['speedup'], '.2f')}x | {'<' if r['of_fp32_bound'] else ''}"
                     f"{fmt(r['of_fp32'], '.2f')} | {fmt(r['end_speedup'], '.2f')} | "
                     f"{fmt(r['final_target_loss'], '.4f')} | {fmt(r['drift'], '+.4f')} | "
                     f"{fmt(r['fp32_drift_at_loss'], '+.4f')} |")
    lines += ["", "`<x`: the swarm did not reach the lone miner's final loss in its cycles, so its speedup is below "
              "lone cycles / swarm cycles (the mean and the ratio to fp32 then use that bound). The column after the "
              "ratio is the other way round: the cycles the lone miner needs for the swarm's final loss / the "
              "swarm's cycles (`-`: the swarm ended below the lone miner's final loss)."]
    lines += ["", "Per seed:", "", "| codec | seed | target loss per cycle | merged per cycle | lone miner per cycle | "
              "swarm cycles to the lone miner's final | speedup | general drift at end |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, h = r["curve"], r["speedup"]
        lines.append(f"| {r['codec']} | {r['seed']} | " + " ".join(f"{p['target_loss']:.3f}" for p in c) + " | "
                     + " ".join(str(p["merged"]) for p in c) + " | "
                     + " ".join(f"{p['target_loss']:.3f}" for p in r["lone"])
                     + f" | {fmt(h['swarm_cycles_to_lone_final'], '.2f')} | {fmt(h['speedup'], '.2f')}x | "
                     f"{c[-1]['general_drift']:+.4f} |")
    lines += ["", f"![target loss against bytes sent]({path.with_suffix('.png').name})"]
    if results.get("codec_decision"):
        lines += ["", "## Findings", "", results["codec_decision"]]
    path.write_text("\n".join(lines) + "\n")


def plot_codecs(results: dict, path: Path) -> None:
    """Target loss against the bytes one miner sent so far, per codec (mean over seeds), log-scaled bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, base = results["codec_rows"], results["base"]
    fig, ax = plt.subplots(figsize=(11, 5))
    for label in dict.fromkeys(r["codec"] for r in rows):
        mine = [r for r in rows if r["codec"] == label]
        cycles = min(len(r["curve"]) for r in mine)
        xs = [mine[0]["curve"][i]["bytes_sent_per_miner"] for i in range(cycles)]
        ys = [_mean([r["curve"][i]["target_loss"] for r in mine]) for i in range(cycles)]
        ax.plot([xs[0] / 4] + xs, [base["target_loss"]] + ys, "o-",
                label=f"{label} ({xs[0]:,d} B/cycle, {len(mine)} seed{'s' if len(mine) > 1 else ''})")
    ax.set_xscale("log")
    ax.set_xlabel("bytes one miner sent (cumulative; the first point is the base model)")
    ax.set_ylabel("target (math) loss")
    ax.set_title(f"M = {rows[0]['miners']} miners, {rows[0]['cycles']} cycles, mean over each codec's seeds")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml", help="manifest template (default configs/tiny.yaml)")
    parser.add_argument("--phases", nargs="+", default=["variants", "miners", "horizon"],
                        choices=["variants", "outer", "lr", "miners", "horizon", "codecs"],
                        help="which phases to run (default variants miners horizon)")
    parser.add_argument("--outer", nargs="+", default=["1.0:0.9", "2.0:0.0", "1.5:0.5"],
                        help="outer_lr:momentum pairs the `outer` phase tries on the --chosen inner loop")
    parser.add_argument("--cycles", type=int, default=3, help="swarm cycles per row at H=20 (default 3)")
    parser.add_argument("--lone-cycles", type=int, default=6,
                        help="lone miner cycles, also the run schedule's horizon (default 6, the main job's)")
    parser.add_argument("--inner-lr", nargs="+", type=float, default=[3e-3],
                        help="inner learning rates the `lr` phase tries on the --chosen variant at M=4 and M=1")
    parser.add_argument("--codecs", nargs="+", default=["fp32", "bf16", "int8", "sparse"],
                        help="payload codecs the `codecs` phase tries, each `name` or `name:key=value,...` "
                             "(e.g. sparse:chunk=4096,density=0.015625,bits=2)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the `codecs` phase (default 0)")
    parser.add_argument("--codec-outer", metavar="LR:MOMENTUM",
                        help="the `codecs` phase with this outer lr and momentum instead of the manifest's")
    parser.add_argument("--miners", type=int, default=4, help="miners in the `codecs` phase (default 4)")
    parser.add_argument("--chosen", help="variant name for the miners/horizon phases (default: the variants "
                        "phase's pick, from this run or the JSON)")
    parser.add_argument("--merge", nargs="*", metavar="JSON",
                        help="only fold the rows and commands of other runs' JSON into --out's and re-render it")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default="teft/assets/studies/outer_sweep", help="output stem (.json and .md)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    results = json.loads(json_path.read_text()) if json_path.exists() else {"rows": [], "commands": []}
    if args.merge is not None:
        for other in (json.loads(Path(p).read_text()) for p in args.merge):
            phases = {r["phase"] for r in other["rows"]}
            results["rows"] = [r for r in results["rows"] if r["phase"] not in phases] + other["rows"]
            results["commands"] += [c for c in other["commands"] if c not in results["commands"]]
        json_path.write_text(json.dumps(results, indent=1) + "\n")
        write_markdown(results, out.with_suffix(".md"))
        return
    results["rows"] = [r for r in results["rows"] if r["phase"] not in args.phases]
    results["commands"] = [c for c in results["commands"] if not any(p in c for p in args.phases if p != "codecs")]
    results["commands"].append("python scripts/outer_sweep.py " + shlex.join(sys.argv[1:]))
    rt = load_tiny(args.config)
    inner = rt.manifest.inner
    results.update(config=args.config, batch=f"{inner.batch_size} x {rt.manifest.data.seq_len} tokens",
                   inner_lr=inner.lr)
    target, general = report_batches(rt.validation_blocks), report_batches(rt.general_blocks)
    base = {k: state_loss(rt.model, rt.layout, rt.initial_state, b)
            for k, b in (("target_loss", target), ("general_loss", general))}
    results["base"] = base
    steps = rt.manifest.inner.steps
    lone_cache: dict = {}

    def save():
        json_path.write_text(json.dumps(results, indent=1) + "\n")
        write_markdown(results, out.with_suffix(".md"))

    def add(phase, v, miners, h, cycles, lone_cycles):
        results["rows"].append({"phase": phase, **row(rt, base, v, miners, h, cycles, lone_cycles, lone_cache)})
        save()
        return results["rows"][-1]

    if "variants" in args.phases:
        inner = [add("variants", v, 4, steps, args.cycles, args.lone_cycles) for v in INNER]
        best_inner = min(inner, key=lambda r: r["curve"][-1]["target_loss"])
        best_v = Variant(**best_inner["variant"])
        outer = [add("variants", v, 4, steps, args.cycles, args.lone_cycles) for v in outer_variants(best_v)]
        chosen = min(inner + outer, key=lambda r: r["curve"][-1]["target_loss"])
        results["chosen"] = chosen["variant"]["name"]
        save()
    name = args.chosen or results.get("chosen")
    chosen_v = next((Variant(**r["variant"]) for r in results["rows"] if r["variant"]["name"] == name), None)
    if name and chosen_v is None:
        chosen_v = next((v for v in INNER + [o for i in INNER for o in outer_variants(i)] if v.name == name), None)
    if chosen_v is None and {"outer", "miners", "horizon"} & set(args.phases):
        raise SystemExit("no chosen variant: run the variants phase first or pass --chosen NAME")
    if "outer" in args.phases:
        for pair in args.outer:
            lr, mu = (float(x) for x in pair.split(":"))
            add("outer", replace(chosen_v, name=f"{chosen_v.name}, outer {lr:g}/{mu:g}", outer_lr=lr, momentum=mu),
                4, steps, args.cycles, args.lone_cycles)
    if "lr" in args.phases:
        for lr in args.inner_lr:
            for miners in (4, 1):
                add("lr", replace(chosen_v, name=f"{chosen_v.name}, inner lr {lr:g}", inner_lr=lr), miners, steps,
                    args.cycles, args.lone_cycles)
    if "miners" in args.phases:
        results["chosen"] = chosen_v.name
        for miners, cycles in ((1, args.cycles), (2, args.cycles), (8, max(args.cycles - 1, 2))):
            add("miners", chosen_v, miners, steps, cycles, args.lone_cycles)
        m4 = next((r for r in results["rows"] if r["variant"]["name"] == chosen_v.name and r["miners"] == 4
                   and r["steps"] == steps), None)
        if m4 is None:
            m4 = add("miners", chosen_v, 4, steps, args.cycles, args.lone_cycles)
        plan = InnerPlan(chosen_v.keep_moments, chosen_v.schedule, args.lone_cycles)
        print("dense DiLoCo and full fine-tuning at M=4 (all parameters)", flush=True)
        dense = dense_diloco(rt, m4["cycles"], 4, plan, OuterConfig(chosen_v.outer_lr, chosen_v.momentum, True))
        full = token_budget(rt, m4["cycles"], 4, methods=("full",))["full"]
        final = m4["curve"][-1]["target_loss"]
        curves = {"swarm (TEFT)": m4["curve"], "lone miner (TEFT)": m4["lone"], "dense DiLoCo": dense,
                  "full fine-tuning, same tokens": full}
        results["forgetting"] = {"row": f"{chosen_v.name}, M=4, H={steps}", "target_loss": final, "curves": {
            k: {"drift_at_swarm_loss": _interp_drift(c, base, final), "curve": c} for k, c in curves.items()}}
        results["forgetting"]["curves"]["swarm (TEFT)"]["drift_at_swarm_loss"] = \
            m4["curve"][-1]["general_loss"] - base["general_loss"]
        save()
    if "codecs" in args.phases:
        def save_codecs(rows):
            results["codec_rows"] = rows
            save()
            write_codec_markdown(results, out.with_suffix(".md"))
            plot_codecs(results, out.with_suffix(".png"))

        specs = [parse_codec(c) for c in args.codecs]
        rows = results.get("codec_rows", [])
        if "fp32" not in {s.codec for s in specs} or args.codec_outer:  # the reference every codec is compared with
            rows = codec_rows(rt, base, [CodecSpec("fp32")], args.seeds, args.miners, args.cycles, args.lone_cycles,
                              rows, save_codecs)
        outer = tuple(float(x) for x in args.codec_outer.split(":")) if args.codec_outer else None
        save_codecs(codec_rows(rt, base, specs, args.seeds, args.miners, args.cycles, args.lone_cycles, rows,
                               save_codecs, outer))
        print(f"wrote {json_path}, {out.with_suffix('.md')} and {out.with_suffix('.png')}")
        return
    if "horizon" in args.phases:
        for h in (50, 100):  # M=2 and fewer cycles: an H=100 cycle of 4 miners costs as much as 20 at H=20
            add("horizon", chosen_v, 2, h, 2, args.lone_cycles // 2)
    save()
    print(f"wrote {json_path} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
