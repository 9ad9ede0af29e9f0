"""The report's plots, each a figure a person reads at a glance; cycles numbered from 0 as in summary.md."""

from __future__ import annotations

import math
from pathlib import Path

from swarm.sim.report import CURVES


def _series(rows, key):
    return [r[key] if r.get(key) is not None else math.nan for r in rows]


def plot(report: dict, out: Path) -> None:
    import matplotlib.pyplot as plt

    for fname, fig in figures(report).items():
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)


def byte_groups(report: dict) -> list[tuple[list[str], list[float]]]:
    """(peer names, MB sent per cycle) with peers whose series are identical in one group, so no line hides
    another in bytes.png; peers that sent nothing form a group too (a silent validator is news)."""
    groups: dict[tuple[float, ...], list[str]] = {}
    for name in sorted(report["peers"]):
        sent = tuple(r["bytes"].get(name, {}).get("out", 0) / 1e6 for r in report["per_cycle"])
        groups.setdefault(sent, []).append(name)
    return [(names, list(sent)) for sent, names in groups.items()]


def _tokens_axis(ax, between: bool = True) -> None:
    """A top axis that labels every x, the baselines' points between cycles included: x = c is the state after
    cycle c's reduce, so it has had c + 1 cycles' worth of training tokens; x = -1 is the base model."""
    top = ax.secondary_xaxis("top", functions=(lambda x: x + 1, lambda x: x - 1))
    top.set_xlabel("cycles' worth of training tokens (" + ("baselines: a point per quarter cycle; " if between
                                                          else "") + "0 = base model)", fontsize=8)


def _source(report: dict) -> str:
    """Where the report's losses were measured, short, for a title."""
    where = report.get("measured_on") or ""
    return "the test split" if "test split" in where else "held-back blocks" if where else "fixed blocks"


def _axes(ax, ylabel: str, title: str) -> None:
    """Cycles numbered from 0 as in summary.md, on whole-number ticks only."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("cycle (the state after its reduce)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def figures(report: dict) -> dict:
    """The report's plots by file name: target_loss, general_perplexity, progress, bytes, scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["per_cycle"]
    cycles = [r["cycle"] for r in rows]  # row c holds the state after cycle c's reduce, as in summary.md
    base = report.get("base") or {}
    figs = {}
    for key, title, fname, transform in (
            ("target_loss", f"Target-domain loss on {_source(report)}", "target_loss.png", lambda x: x),
            ("general_loss", "General-domain perplexity", "general_perplexity.png", math.exp)):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.plot(cycles, [transform(v) if v == v else v for v in _series(rows, key)], "o-", lw=2,
                label="swarm (TEFT, merged)")
        baseline = report.get("baseline") or {}
        for method, style, label in (("teft", "s--", "single-process TEFT"),
                                     ("full", "^--", "full fine-tuning")):
            if baseline.get(method):
                ax.plot([p["cycle"] for p in baseline[method]],
                        [transform(p[key]) for p in baseline[method]], style, label=f"{label}, same tokens")
        if base.get(key) is not None:
            ax.axhline(transform(base[key]), color="grey", ls=":", label="base model")
            ax.plot([-1], [transform(base[key])], "k*", label="base model (no training)")
        _axes(ax, "perplexity" if transform is math.exp else "loss (nats/token)", title)
        _tokens_axis(ax)
        ax.legend(fontsize=8)
        fig.tight_layout()
        figs[fname] = fig

    figs["progress.png"] = progress_figure(report)

    fig, ax = plt.subplots(figsize=(10, 4.5))
    markers = "osD^vP*Xh"
    for i, (names, sent) in enumerate(byte_groups(report)):
        label = names[0] if len(names) == 1 else f"{', '.join(names[:3])}" + (
            f" and {len(names) - 3} more" if len(names) > 3 else "") + " (identical)"
        if not any(sent):
            label += ": sent nothing"
        ax.plot(cycles, sent, marker=markers[i % len(markers)], ls="-", label=label)
    ax.axhline(report["payload_bytes"] / 1e6, color="black", ls="--", label="one payload")
    ax.set_ylim(bottom=0)  # from zero: a peer that sent nothing is on the chart, and heights compare
    dense_mb = report["dense_model_bytes"] / 1e6
    _axes(ax, "MB sent", f"Bytes sent per cycle per peer (a dense model exchange is {dense_mb:.1f} MB)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    figs["bytes.png"] = fig

    fig, ax = plt.subplots(figsize=(8, 4.5))
    miners = sorted(n for n, p in report["peers"].items() if p["role"] == "miner")
    adversaries = any(report["peers"][n]["adversary"] for n in miners)
    for name in miners:
        adv = report["peers"][name]["adversary"]
        scores = [r["combined"].get(name, 0.0) for r in rows]
        ax.plot(cycles, scores, "x:" if adv else "o-", lw=1 if adv else 2, label=f"{name}" + (" (adv)" if adv else ""))
    _axes(ax, "combined Proof-of-Loss score (median)",
          "Score per miner per cycle" + (" (dotted x: adversaries)" if adversaries else ""))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    figs["scores.png"] = fig
    return figs


def progress_figure(report: dict):
    """progress.png: target loss per cycle for the swarm, a lone miner and dense DiLoCo, the picture of whether
    more miners mean faster progress (cycles numbered like the other plots; the base model dotted)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    miners = sum(1 for p in report.get("peers", {}).values() if p.get("role") == "miner" and not p.get("adversary"))
    rows = [r for r in report["per_cycle"] if r.get("target_loss") is not None]
    ax.plot([r["cycle"] for r in rows], [r["target_loss"] for r in rows], "o-", lw=2,
            label=f"swarm ({miners} honest miners)")
    for method, style, label in CURVES[:2]:
        curve = (report.get("baseline") or {}).get(method)
        if curve:
            ax.plot([p["cycle"] for p in curve], [p["target_loss"] for p in curve], style, label=label)
    base = (report.get("base") or {}).get("target_loss")
    if base is not None:
        ax.axhline(base, color="grey", ls=":", label="base model")
        ax.plot([-1], [base], "k*", label="base model (no training)")
    speed = report.get("speedup") or {}
    title = "Progress per cycle" + (f": {speed['speedup']:.2f}x a lone miner at loss {speed['target_loss']:.3f}"
                                    if speed.get("speedup") and speed.get("target_loss") is not None else "")
    _axes(ax, "target-domain loss (nats/token)", title)
    _tokens_axis(ax, between=False)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
