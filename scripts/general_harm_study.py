"""Can a validator tell an update trained to raise general-text loss from an honest one by its general drift?
Measured in one process on the embedded default (tiny, math).

An in-process swarm of honest miners (the project's own `train_submission`, the manifest's inner loop, moments
kept, the outer step on every honest update) walks through `--cycles` cycles. At each cycle's start state it
also trains, with the same batches, steps and schedule (swarm.sim.adversaries.drift.harm_state):
  - harm-0.5:   the general-harm adversary, L_math - 0.5 L_general on the public general validation split;
  - harm-0.25:  a quieter one, weight 0.25;
  - harm-train: weight 0.5 on the general *train* split, so the blocks a validator measures were never its aim.
All are sent through the codec (int8) and scaled under max_delta_norm as the adversary does. Every update is then
judged under `--seeds` evaluation seeds: the Proof-of-Loss gain on a validator's private held-out math (the
scoring subset; for a domain other than the shipped math, the public validation split) and each block's drift
on `--general-blocks` blocks of the public general validation split picked by the seed (smaller counts are the
first blocks by the seed's rank, so one pass serves every size).
The true harm of each update is its drift on 256 blocks of the general *test* split, which nobody trains on.

Rules, applied to the saved judgements (`--rescore` again without training), count only updates that gain (score
> 0: the only ones a reduce can merge):
  - drift T:        zero if the mean drift on G blocks exceeds T nats (validators apply this one:
                    data.max_general_drift and data.general_check_blocks, swarm.roles.validator.judge);
  - drift T by z:   zero if it exceeds T by over z standard errors (the blocks' spread);
  - + r x gain:     a limit that grows with the update's math gain.

    python scripts/general_harm_study.py --cycles 6 --miners 12 --attackers 2 --seeds 6 --threads 2 \
        --out teft/assets/studies/general_harm   # ~9 min on 2 cores
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

from scripts.overfit_check import decoded_state, heldout_blocks, load_tiny  # noqa: E402
from scripts.overfit_check import swarm_updates as honest_swarm  # noqa: E402
from swarm.protocol.runtime import Runtime  # noqa: E402
from swarm.roles.miner import encode_state  # noqa: E402
from swarm.roles.validator import validation_batches  # noqa: E402
from swarm.sim.adversaries.drift import NORM_MARGIN, harm_state  # noqa: E402
from swarm.sim.adversaries.overfit import within_norm  # noqa: E402
from teft.data import load_texts, subset, tokenize_blocks  # noqa: E402
from teft.pol import state_block_losses  # noqa: E402

SIZES = (8, 16, 32, 64)  # general blocks a validator might measure
TRUE_BLOCKS = 256  # of the general test split: each update's true general drift
HARMS = {"harm-0.5": (0.5, "validation"), "harm-0.25": (0.25, "validation"), "harm-train": (0.5, "train")}


def batches_of(rt: Runtime, blocks: torch.Tensor) -> list[torch.Tensor]:
    size = rt.manifest.data.eval_batch_size
    return [blocks[i:i + size] for i in range(0, len(blocks), size)]


def general_pick(rt: Runtime, seed: bytes, most: int) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """The seed's `most` general blocks as batches, and for every smaller size the positions (in that order) of
    the blocks the seed picks for it: subset() picks the smallest ranks, so each is inside the larger pick."""
    index = torch.arange(len(rt.general_blocks)).unsqueeze(1)
    order = subset(index, b"general/" + seed, most).flatten().tolist()
    where = {row: i for i, row in enumerate(order)}
    sizes = {str(g): torch.tensor([where[row] for row in subset(index, b"general/" + seed, g).flatten().tolist()])
             for g in SIZES if g <= most}
    return batches_of(rt, rt.general_blocks[order]), sizes


def swarm_updates(rt: Runtime, cycles: int, miners: int, attackers: int, general_train: torch.Tensor):
    """overfit_check's honest swarm, every update as a validator judges it, and at each start state the harmful
    kinds (HARMS) beside the honest miners: (cycle, start state, {(kind, name): judged state})."""
    bound = NORM_MARGIN * rt.manifest.max_delta_norm
    for cycle, state, updates in honest_swarm(rt, cycles, miners, 0, decoded=True):
        for kind, (weight, split) in HARMS.items():
            general = rt.general_blocks if split == "validation" else general_train
            for k in range(attackers):
                trained = within_norm(harm_state(rt, state, f"{kind}-{k}", cycle, general, weight), state, bound)
                updates[(kind, f"{kind}-{k}")] = decoded_state(rt, state, encode_state(rt, state, trained))
        yield cycle, state, updates


def collect(rt: Runtime, args, checkpoint) -> list[dict]:
    # a validator's private held-out math as simulations make it; for another domain, the public split
    heldout = heldout_blocks(rt, "general-harm") if rt.manifest.data.train == "math" else rt.validation_blocks
    spec = rt.manifest.data
    general_train = tokenize_blocks(rt.tokenizer, load_texts(spec.general_validation, "train"), spec.seq_len,
                                    spec.validation_tokens)
    true_batches = batches_of(rt, subset(rt.report_general_blocks, b"general-harm/true", TRUE_BLOCKS))
    rows, start = [], time.time()
    for cycle, state, updates in swarm_updates(rt, args.cycles, args.miners, args.attackers, general_train):
        true_base = state_block_losses(rt.model, rt.layout, state, true_batches)
        true = {key: float((state_block_losses(rt.model, rt.layout, upd, true_batches) - true_base).mean())
                for key, upd in updates.items()}
        for s in range(args.seeds):
            seed = f"general-harm/{cycle}/{s}".encode()
            scoring = validation_batches(rt, seed, heldout)
            held_base = state_block_losses(rt.model, rt.layout, state, scoring)
            general, sizes = general_pick(rt, seed, args.general_blocks)
            general_base = state_block_losses(rt.model, rt.layout, state, general)
            for (kind, name), upd in updates.items():
                gain = held_base - state_block_losses(rt.model, rt.layout, upd, scoring)
                drift = state_block_losses(rt.model, rt.layout, upd, general) - general_base
                rows.append({"cycle": cycle, "seed": s, "kind": kind, "miner": name,
                             "gain": round(float(gain.mean()), 6),
                             "drift": {g: mean_and_error(drift[where]) for g, where in sizes.items()},
                             "true_drift": round(true[(kind, name)], 6)})
        print(f"cycle {cycle}: {len(updates)} updates judged under {args.seeds} seeds [{time.time() - start:.0f}s]",
              flush=True)
        start = time.time()
        checkpoint(rows)
    return rows


def mean_and_error(values: torch.Tensor) -> list[float]:
    """[mean, standard error of the mean] of per-block drifts, rounded for the record."""
    error = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else 0.0
    return [round(float(values.mean()), 6), round(error, 6)]


def drift_of(row: dict, size: int) -> tuple[float, float]:
    """(mean drift, its standard error) on the seed's first `size` general blocks."""
    mean, error = row["drift"][str(size)]
    return mean, error


def flagged(row: dict, size: int, limit: float, z: float | None, ratio: float = 0.0) -> bool:
    """Is the update's drift on `size` blocks past `limit` + `ratio` x its gain, by over z standard errors?"""
    drift, error = drift_of(row, size)
    return drift > limit + ratio * max(row["gain"], 0.0) + (z * error if z else 0.0)


LIMITS = (0.04, 0.05, 0.06, 0.07, 0.08, 0.10)
ZS = (None, 2.0, 3.0)
RATIOS = (0.0, 1.0)


def rates(rows: list[dict]) -> dict:
    """Per rule, block count and kind: how many of the gaining judgements it zeroes."""
    gaining = [r for r in rows if r["gain"] > 0]
    kinds = sorted({r["kind"] for r in rows})
    out = {}
    for size in sorted({int(g) for r in rows for g in r["drift"]}):
        for ratio in RATIOS:
            for limit in LIMITS:
                for z in ZS:
                    name = (f"G {size}, drift > {limit:g}" + (f" + {ratio:g} x gain" if ratio else "")
                            + (f" by z {z:g}" if z else ""))
                    out[name] = {kind: {"zeroed": sum(flagged(r, size, limit, z, ratio) for r in gaining
                                                      if r["kind"] == kind),
                                        "of": sum(r["kind"] == kind for r in gaining)} for kind in kinds}
    return out


def quantiles(values: list[float]) -> dict:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "min": ordered[0], "p10": pick(0.1), "median": pick(0.5), "p90": pick(0.9),
            "max": ordered[-1]} if ordered else {"n": 0}


def summary(rows: list[dict]) -> dict:
    """Per kind: gain, true drift, and measured drift per block count, over the gaining judgements."""
    out = {}
    for kind in sorted({r["kind"] for r in rows}):
        chosen = [r for r in rows if r["kind"] == kind]
        gaining = [r for r in chosen if r["gain"] > 0]
        out[kind] = {"judgements": len(chosen), "gaining": len(gaining),
                     "gain": quantiles([r["gain"] for r in gaining]),
                     "true_drift": quantiles([r["true_drift"] for r in gaining]),
                     **{f"drift_G{size}": quantiles([drift_of(r, size)[0] for r in gaining])
                        for size in sorted({int(g) for r in rows for g in r["drift"]})}}
        late = [r for r in gaining if r["cycle"] > 0]
        out[kind]["true_drift_late"] = quantiles([r["true_drift"] for r in late])
    return out


def markdown(result: dict) -> str:
    """The study as a page: per kind the drift a validator measures, then each rule's zeroed counts."""
    sizes = sorted({int(g) for r in result["judgements"] for g in r["drift"]})
    lines = ["# General harm: can a validator tell an update trained against general text by its drift?", "",
             f"`{result['command']}` ({result['seconds']} s)", "",
             "Only judgements that gain on held-out math count (a reduce merges nothing else). Drift: the mean rise "
             "of the general-text loss (nats) on G blocks of the public general validation split picked by the "
             "seed; true drift: on 256 blocks of the general test split.", "",
             "| kind | gaining / judged | math gain, median | true drift (min / median / max) | "
             + " | ".join(f"drift on {g} blocks (min / median / max)" for g in sizes) + " |",
             "|---|---|---|---|" + "---|" * len(sizes)]
    for kind, s in result["summary"].items():
        if not s["gaining"]:
            continue
        span = lambda q: f"{q['min']:.3f} / {q['median']:.3f} / {q['max']:.3f}"  # noqa: E731
        lines.append(f"| {kind} | {s['gaining']} / {s['judgements']} | {s['gain']['median']:.4f} | "
                     f"{span(s['true_drift'])} | " + " | ".join(span(s[f'drift_G{g}']) for g in sizes) + " |")
    kinds = list(result["summary"])
    lines += ["", "| rule (zero if) | " + " | ".join(f"{k} zeroed" for k in kinds) + " |",
              "|---|" + "---|" * len(kinds)]
    for name, per in result["rules"].items():
        lines.append(f"| {name} | " + " | ".join(f"{per[k]['zeroed']} / {per[k]['of']}" for k in kinds) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--cycles", type=int, default=6, help="swarm cycles (default 6, the run's schedule)")
    parser.add_argument("--miners", type=int, default=6, help="honest miners per cycle (default 6)")
    parser.add_argument("--attackers", type=int, default=2, help="miners of each harmful kind per cycle (default 2)")
    parser.add_argument("--seeds", type=int, default=4, help="evaluation seeds per cycle (default 4)")
    parser.add_argument("--general-blocks", type=int, default=max(SIZES),
                        help="general blocks measured per seed; smaller counts are read from them "
                             f"(default {max(SIZES)})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/general_harm", help="output stem: STEM.json and STEM.md")
    parser.add_argument("--rescore", metavar="JSON", help="only apply the rules again to a run's saved judgements")
    args = parser.parse_args()
    if args.rescore:
        result = json.loads(Path(args.rescore).read_text())
        result["summary"], result["rules"] = summary(result["judgements"]), rates(result["judgements"])
        Path(args.rescore).write_text(json.dumps(result, indent=1) + "\n")
        Path(args.rescore).with_suffix(".md").write_text(markdown(result))
        print(markdown(result))
        return
    torch.set_num_threads(args.threads)
    start = time.time()
    out = Path(args.out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def result_of(rows: list[dict]) -> dict:
        return {"command": " ".join(["python", *sys.argv]), "seconds": round(time.time() - start),
                "cycles_done": 1 + max(r["cycle"] for r in rows), "summary": summary(rows), "rules": rates(rows),
                "judgements": rows}

    def checkpoint(rows: list[dict]) -> None:  # each finished cycle is kept, should a later one not finish
        out.write_text(json.dumps(result_of(rows), indent=1) + "\n")

    rt = load_tiny(args.config)
    if rt.general_blocks is None:
        parser.error(f"{args.config} names no general_validation data: there is no general drift to measure")
    rows = collect(rt, args, checkpoint)
    result = result_of(rows)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')} [{result['seconds']}s]")


if __name__ == "__main__":
    main()
