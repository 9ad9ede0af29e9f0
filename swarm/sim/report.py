"""A simulation's report: gathered from every peer's metrics.jsonl, written as report.json, plots and summary.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

CURVES = (("lone", "s--", "lone miner (H steps per cycle)"), ("dense_diloco", "^--", "dense DiLoCo (all parameters)"),
          ("teft", "d:", "single-process TEFT, same tokens"), ("full", "v:", "full fine-tuning, same tokens"))
BASELINES = tuple(name for name, _, _ in CURVES)  # what `swarm.simulate --baseline` can run


def metrics(peer) -> dict[int, dict]:
    """The peer's per-cycle logs (the last line per cycle wins, e.g. after a restart)."""
    path = peer.workdir / "metrics.jsonl"
    out: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            out[int(row["cycle"])] = row
    return out


def build_report(swarm, cycles: int, payload_size: int, dense_bytes: int, baseline: dict | None) -> dict:
    """Everything a person asks of the run, per cycle and per peer."""
    names = {p.peer_id: p.name for p in swarm.peers}
    per_peer = {p.name: metrics(p) for p in swarm.peers}
    honest = [p for p in swarm.peers if p.adversary is None]
    rows = []
    ever_merged: dict[str, bool] = {p.name: False for p in swarm.peers if p.role == "miner"}
    for c in range(cycles):
        hashes = {p.name: per_peer[p.name].get(c, {}).get("state_hash", "") for p in honest}
        present = {n: h for n, h in hashes.items() if h}
        validators = [p for p in honest if p.role == "validator" and c in per_peer[p.name]]
        ref = per_peer[validators[0].name][c] if validators else {}
        merged = [names.get(m, m) for m in ref.get("merged", [])]
        for m in merged:
            ever_merged[m] = True
        rows.append({
            "cycle": c,
            "merged": merged,
            "scores": {names.get(v, v[:12]): {names.get(m, m): s for m, s in sc.items()}
                       for v, sc in ref.get("rankings", {}).items()},
            "combined": {names.get(m, m): s for m, s in ref.get("medians", {}).items()},
            "quorum_met": ref.get("quorum_met", False),
            "honest_peers_reporting": len(present),
            "honest_agree": len(present) > 0 and len(set(present.values())) == 1,
            "state_hash": next(iter(present.values()), ""),
            "target_loss": ref.get("target_loss"),
            "general_loss": ref.get("general_loss"),
            "general_perplexity": _exp(ref.get("general_loss")),
            "target_perplexity": _exp(ref.get("target_loss")),
            "train_loss": {p.name: per_peer[p.name].get(c, {}).get("train_loss") for p in swarm.peers
                           if p.role == "miner" and per_peer[p.name].get(c, {}).get("train_loss")},
            "bytes": {p.name: {"in": per_peer[p.name].get(c, {}).get("bytes_in", 0),
                               "out": per_peer[p.name].get(c, {}).get("bytes_out", 0)} for p in swarm.peers},
            "rejected": {names.get(m, m): r for m, r in ref.get("rejected", {}).items()},
        })
    start = next((per_peer[p.name][0] for p in honest if p.role == "validator" and 0 in per_peer[p.name]), {})
    base = {"target_loss": start.get("start_target_loss"), "general_loss": start.get("start_general_loss")}
    return {
        "manifest": str(swarm.manifest_path), "cycles": cycles, "payload_bytes": payload_size, "base": base,
        "dense_model_bytes": dense_bytes,
        "peers": {p.name: {"role": p.role, "adversary": p.adversary, "peer_id": p.peer_id,
                           "allowlisted": p.allowlisted, "start_cycle": p.start_cycle, "restarts": p.restarts}
                  for p in swarm.peers},
        "per_cycle": rows,
        "adversaries_ever_merged": {p.name: ever_merged.get(p.name, False) for p in swarm.peers
                                    if p.adversary and p.role == "miner"},
        "honest_miners_ever_merged": {p.name: ever_merged.get(p.name, False) for p in honest if p.role == "miner"},
        "all_cycles_agree": all(r["honest_agree"] for r in rows),
        "baseline": baseline,
    }


def _exp(loss):
    return math.exp(loss) if isinstance(loss, (int, float)) and loss < 50 else None


def write_outputs(report: dict, out: Path) -> None:
    out = Path(out)
    add_drift(report)
    add_speedup(report)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    from swarm.sim.plots import plot

    plot(report, out)
    (out / "summary.md").write_text(summary(report))


def cycles_to_reach(curve: list[dict], base_loss: float | None, loss: float) -> float | None:
    """After how many cycles (interpolated) a curve's target loss first reaches `loss`; None if it never does.
    A point with `cycle` c counts c + 1 cycles; the base model is the curve's point at 0 cycles."""
    points = [(0.0, base_loss)] if base_loss is not None else []
    points += [(p["cycle"] + 1.0, p["target_loss"]) for p in curve if p.get("target_loss") is not None]
    if points and points[0][1] <= loss:
        return points[0][0]
    for (x0, l0), (x1, l1) in zip(points, points[1:], strict=False):
        if l1 <= loss:  # first crossing: l0 > loss >= l1
            return x0 + (x1 - x0) * (l0 - loss) / (l0 - l1)
    return None


def speedup(swarm: list[dict], lone: list[dict], base_loss: float | None) -> tuple[list[float | None], dict]:
    """Per swarm cycle: cycles the lone miner needs for the swarm's loss / the swarm's cycles (None where the
    lone miner never got there); and the headline: the lone miner's final loss, the swarm's cycles to reach it
    and their ratio."""
    per_cycle = []
    for r in swarm:
        needed = cycles_to_reach(lone, base_loss, r["target_loss"]) if r.get("target_loss") is not None else None
        per_cycle.append(needed / (r["cycle"] + 1) if needed is not None else None)
    final = lone[-1]["target_loss"] if lone else None
    lone_cycles = lone[-1]["cycle"] + 1 if lone else None
    reach = cycles_to_reach(swarm, base_loss, final) if final is not None else None
    headline = {"lone_cycles": lone_cycles, "lone_final_target_loss": final, "swarm_cycles_to_lone_final": reach,
                "speedup": lone_cycles / reach if reach else None}
    return per_cycle, headline


def add_speedup(report: dict) -> None:
    """Per cycle the speedup over a lone miner and every baseline curve's general drift at the swarm's target
    loss; plus the headline speedup and, at the swarm's final target loss, the drift of each curve."""
    base = report.get("base") or {}
    baseline = report.get("baseline") or {}
    rows = report["per_cycle"]
    lone = baseline.get("lone")
    per_cycle = speedup(rows, lone, base.get("target_loss"))[0] if lone else [None] * len(rows)
    report["speedup"] = speedup(rows, lone, base.get("target_loss"))[1] if lone else None
    for r, value in zip(rows, per_cycle, strict=True):
        r["speedup_vs_lone"] = value
        r["drift_at_same_target_loss"] = {
            method: (_interp_drift(baseline[method], base, r["target_loss"])
                     if r.get("target_loss") is not None and base.get("general_loss") is not None else None)
            for method, _, _ in CURVES if baseline.get(method)}
    last = next((r for r in reversed(rows) if r.get("target_loss") is not None), None)
    report["drift_at_final_target_loss"] = None if last is None else {
        "target_loss": last["target_loss"], "swarm": last.get("general_drift"), **last["drift_at_same_target_loss"]}


def _interp_drift(curve: list[dict], base: dict, target: float) -> float | None:
    """General-loss drift of a baseline curve at a given target loss, by linear interpolation (the base
    model is the curve's first point)."""
    start = [(base["target_loss"], 0.0)] if base.get("target_loss") is not None else []
    points = sorted(start + [(p["target_loss"], p["general_loss"] - base["general_loss"]) for p in curve])
    for (t0, d0), (t1, d1) in zip(points, points[1:], strict=False):
        if t0 <= target <= t1 and t1 > t0:
            return d0 + (d1 - d0) * (target - t0) / (t1 - t0)
    return None


def add_drift(report: dict) -> None:
    """Per cycle, the swarm's general-loss drift from the base model and the full-FT baseline's drift at the
    same target loss; plus how many cycles the swarm drifted less. Comparing at equal target loss, not equal
    tokens, is what says whether training only the target experts forgets less for the same gain."""
    base = report.get("base") or {}
    full = (report.get("baseline") or {}).get("full")
    compared = less = 0
    for r in report["per_cycle"]:
        known = base.get("general_loss") is not None and r.get("general_loss") is not None
        r["general_drift"] = r["general_loss"] - base["general_loss"] if known else None
        r["full_ft_drift_at_same_target_loss"] = (_interp_drift(full, base, r["target_loss"])
                                                  if full and r.get("target_loss") is not None else None)
        if r["general_drift"] is not None and r["full_ft_drift_at_same_target_loss"] is not None:
            compared += 1
            less += r["general_drift"] < r["full_ft_drift_at_same_target_loss"]
    report["drift_vs_full_ft"] = {"cycles_compared": compared, "cycles_swarm_drifts_less": less}


def summary(report: dict) -> str:
    rows = report["per_cycle"]
    first, last = rows[0], rows[-1]
    base = report.get("base") or {}

    def mean_train(row, i):
        losses = [v[i] for v in row["train_loss"].values() if v and v[i] == v[i]]
        return sum(losses) / len(losses) if losses else math.nan

    lines = ["# Swarm simulation summary", "",
             f"{len(report['peers'])} peers, {report['cycles']} cycles; manifest `{report['manifest']}`.", "",
             "| measure | value |", "|---|---|",
             f"| training loss, first cycle (start -> end of inner loop) | {mean_train(first, 0):.4f} -> "
             f"{mean_train(first, 1):.4f} |",
             f"| training loss, last cycle | {mean_train(last, 0):.4f} -> {mean_train(last, 1):.4f} |",
             f"| target-domain perplexity, base -> last cycle | "
             f"{_fmt(math.exp(base['target_loss']) if base.get('target_loss') else None)} -> "
             f"{_fmt(last['target_perplexity'])} |",
             f"| payload bytes per miner per cycle | {report['payload_bytes']:,d}"
             f"{' (' + report['payload_codec'] + ')' if report.get('payload_codec') else ''} |",
             f"| dense full-model exchange (fp32) | {report['dense_model_bytes']:,d} "
             f"({report['dense_model_bytes'] / report['payload_bytes']:.1f}x the payload) |",
             f"| honest peers agreed on the state hash every cycle | {'yes' if report['all_cycles_agree'] else 'NO'} |",
             f"| general drift below full fine-tuning's at the same target loss | {_verdict(report)} |",
             *_progress_lines(report),
             "", "## Per cycle", "",
             "| cycle | merged | target loss | target ppl | general ppl | general drift | full FT drift at same "
             "target loss | honest peers agree | speedup vs lone miner | lone miner drift at same target loss | "
             "dense DiLoCo drift at same target loss |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        drift, full_drift = r.get("general_drift"), r.get("full_ft_drift_at_same_target_loss")
        others = r.get("drift_at_same_target_loss") or {}
        lines.append(f"| {r['cycle']} | {len(r['merged'])}: {', '.join(r['merged']) or '-'} | "
                     f"{_fmt(r['target_loss'])} | {_fmt(r['target_perplexity'])} | {_fmt(r['general_perplexity'])} | "
                     f"{_fmt(drift)} | {_fmt(full_drift)} | {'yes' if r['honest_agree'] else 'no'} | "
                     f"{_fmt(r.get('speedup_vs_lone'), 'x')} | {_fmt(others.get('lone'))} | "
                     f"{_fmt(others.get('dense_diloco'))} |")
    if report["adversaries_ever_merged"]:
        lines += ["", "## Adversaries", "", "| peer | kind | ever merged | why it scored zero (first cycle seen) |",
                  "|---|---|---|---|"]
        for name, merged in sorted(report["adversaries_ever_merged"].items()):
            why = next((r["rejected"][name] for r in rows if name in r["rejected"]), "not ranked / score 0")
            lines.append(f"| {name} | {report['peers'][name]['adversary']} | {'YES' if merged else 'no'} | {why} |")
    liars = [n for n, p in report["peers"].items() if p["adversary"] in ("liar", "stranger")]
    if liars:
        lines += ["", f"Misbehaving validators present: {', '.join(liars)}; merged sets above are the combined "
                  "(median) decision of the allowlisted validators."]
    return "\n".join(lines) + "\n"


def _verdict(report: dict) -> str:
    counts = report.get("drift_vs_full_ft") or {}
    if not counts.get("cycles_compared"):
        return "not compared (run with --baseline)"
    return f"{counts['cycles_swarm_drifts_less']} of {counts['cycles_compared']} cycles"


def _fmt(value, unit: str = "") -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.2f}{unit}" if unit else f"{value:.4f}"


def _progress_lines(report: dict) -> list[str]:
    """Headline rows: the speedup over a lone miner and each curve's drift at the swarm's final target loss."""
    speed, final = report.get("speedup"), report.get("drift_at_final_target_loss")
    lines = []
    if speed and speed.get("lone_final_target_loss") is not None:
        reach = speed.get("swarm_cycles_to_lone_final")
        lines.append(f"| speedup vs a lone miner (its {speed['lone_cycles']}-cycle target loss "
                     f"{speed['lone_final_target_loss']:.4f}: swarm reaches it after "
                     f"{_fmt(reach, ' cycles') if reach else 'more cycles than ran'}) | "
                     f"{_fmt(speed.get('speedup'), 'x')} |")
    if final:
        names = {"swarm": "swarm", **{m: label for m, _, label in CURVES}}
        lines.append(f"| general drift at the swarm's final target loss {final['target_loss']:.4f} | "
                     + ", ".join(f"{names[k]} {_fmt(v)}" for k, v in final.items() if k in names) + " |")
    return lines
