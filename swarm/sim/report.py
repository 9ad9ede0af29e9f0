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
            "reporting": sorted(present),
            "states": {n: h[:12] for n, h in sorted(present.items())},
            "honest_agree": len(present) > 0 and len(set(present.values())) == 1,
            "state_hash": next(iter(present.values()), ""),
            "target_loss": ref.get("target_loss"),
            "general_loss": ref.get("general_loss"),
            "general_perplexity": _exp(ref.get("general_loss")),
            "target_perplexity": _exp(ref.get("target_loss")),
            "train_loss": {p.name: per_peer[p.name].get(c, {}).get("train_loss") for p in swarm.peers
                           if p.role == "miner" and per_peer[p.name].get(c, {}).get("train_loss")},
            "train_loss_mean": {p.name: per_peer[p.name][c]["train_loss_mean"] for p in honest
                                if p.role == "miner" and per_peer[p.name].get(c, {}).get("train_loss_mean")},
            "bytes": {p.name: {"in": per_peer[p.name].get(c, {}).get("bytes_in", 0),
                               "out": per_peer[p.name].get(c, {}).get("bytes_out", 0),
                               "rate_in": per_peer[p.name].get(c, {}).get("rate_in"),
                               "rate_out": per_peer[p.name].get(c, {}).get("rate_out")} for p in swarm.peers},
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
        "adversary_merged_cycles": merged_cycles(rows, [p.name for p in swarm.peers
                                                        if p.adversary and p.role == "miner"]),
        "honest_miners_ever_merged": {p.name: ever_merged.get(p.name, False) for p in honest if p.role == "miner"},
        "all_cycles_agree": all(r["honest_agree"] for r in rows),
        "baseline": baseline,
    }


def merged_cycles(rows: list[dict], names: list[str]) -> dict[str, list[int]]:
    """The cycles in which each named miner was merged: what an adversary's merges may have moved (the report's
    losses are measured on the test split, which no miner trains on, so a merge helps them only as far as it
    generalizes)."""
    return {name: [r["cycle"] for r in rows if name in r.get("merged", [])] for name in names}


def fault_rows(report: dict, faults: list, clock, also_hit: set[tuple[str, int]] = frozenset()) -> list[dict]:
    """Per scripted fault (swarm.sim.faults): what was done, and from its cycle on what the swarm did; its cost
    is the cycles until the targets were back (a miner serving its payload or merged again, any other peer
    reporting the state again) or, for a killed bootstrap node, the cycles from then on in which honest peers
    disagreed or an honest miner no other fault hit was not back in that sense. `also_hit`: (peer, cycle) pairs
    other scripted events hit (a --kill-restart), not charged to any fault."""
    rows, peers = report["per_cycle"], report["peers"]
    honest_miners = [n for n, p in peers.items() if p["role"] == "miner" and p["adversary"] is None]
    out = []
    for fault in faults:
        hit_by_others = {(t, c) for f in faults if f is not fault for t in f.targets
                         for c in range(f.cycle, f.cycle + 1 + int(f.seconds // clock.cycle_length))} | set(also_hit)
        seen = []
        for r in rows[fault.cycle:]:
            c = r["cycle"]
            seen.append({"cycle": c, "honest_miners_merged": sum(m in r["merged"] for m in honest_miners),
                         "honest_miners": len(honest_miners), "agree": r["honest_agree"],
                         "targets_back": [t for t in fault.targets
                                          if _back(t, r, peers, report["payload_bytes"])]})
        if fault.kind == "kill-bootstrap":
            bad = [s["cycle"] for s, r in zip(seen, rows[fault.cycle:], strict=True) if not s["agree"] or any(
                not _back(m, r, peers, report["payload_bytes"]) and (m, r["cycle"]) not in hit_by_others
                for m in honest_miners)]
            cost, back = len(bad), None
            verdict = (f"{len(bad)} of {len(seen)} cycles from {fault.cycle} on had a disagreement or an honest "
                       f"miner that neither served its payload nor was merged ({', '.join(map(str, bad)) or 'none'})")
        else:
            back = next((s["cycle"] for s in seen if len(s["targets_back"]) == len(fault.targets)), None)
            cost = (back if back is not None else len(rows)) - fault.cycle
            verdict = (f"back in cycle {back}: cost {cost} cycle(s)" if back is not None
                       else f"not back by the end: cost {cost} cycle(s) or more")
        out.append({"fault": fault.describe(), "kind": fault.kind, "targets": fault.targets, "cycle": fault.cycle,
                    "seconds": fault.seconds, "notes": fault.notes, "applied_at": fault.started,
                    "undone_at": fault.ended, "cycles": seen, "back_in_cycle": back, "cost_cycles": cost,
                    "verdict": verdict})
    return out


def _back(name: str, row: dict, peers: dict, payload: int) -> bool:
    """A miner is back once it served a payload's worth to the validators or was merged (a merge also needs a
    positive score, which is not the network's to give); any other peer once it reports the cycle's state."""
    if name in peers and peers[name]["role"] == "miner":
        return name in row["merged"] or row["bytes"].get(name, {}).get("out", 0) >= payload
    return name in row.get("reporting", [])


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


SPEEDUP_DEFINITION = ("speedup at a target loss L = cycles a lone miner needs to first reach L / cycles the swarm "
                      "needs to first reach L (linear between evaluations, the base model at 0 cycles)")


def speedup_at(swarm: list[dict], lone: list[dict], base_loss: float | None, loss: float) -> dict:
    """The one speedup definition (SPEEDUP_DEFINITION) at loss `loss`; None where either never got there."""
    lone_cycles, swarm_cycles = cycles_to_reach(lone, base_loss, loss), cycles_to_reach(swarm, base_loss, loss)
    return {"target_loss": loss, "lone_cycles_to_it": lone_cycles, "swarm_cycles_to_it": swarm_cycles,
            "speedup": lone_cycles / swarm_cycles if lone_cycles is not None and swarm_cycles else None}


def speedup(swarm: list[dict], lone: list[dict], base_loss: float | None) -> tuple[list[float | None], dict]:
    """Speedups by one definition (SPEEDUP_DEFINITION): per swarm cycle at the loss the swarm holds after it
    (None where the lone miner never got there), and the headline at the lowest loss both reached."""
    known = [r for r in swarm if r.get("target_loss") is not None]
    per_cycle = [speedup_at(known, lone, base_loss, r["target_loss"])["speedup"]
                 if r.get("target_loss") is not None else None for r in swarm]
    lows = [min(p["target_loss"] for p in curve) for curve in (known, lone) if curve]
    if len(lows) < 2:
        return per_cycle, {"speedup": None, "target_loss": None, "definition": SPEEDUP_DEFINITION}
    headline = speedup_at(known, lone, base_loss, max(lows))
    headline.update(definition=SPEEDUP_DEFINITION, lone_cycles=lone[-1]["cycle"] + 1,
                    lone_final_target_loss=lone[-1]["target_loss"],
                    swarm_cycles_to_lone_final=cycles_to_reach(known, base_loss, lone[-1]["target_loss"]))
    return per_cycle, headline


def add_speedup(report: dict) -> None:
    """Per cycle the speedup over a lone miner and every baseline curve's general drift at the swarm's target
    loss; plus the headline speedup and, at the swarm's final target loss, the drift of each curve."""
    base = report.get("base") or {}
    baseline = report.get("baseline") or {}
    rows = report["per_cycle"]
    lone = baseline.get("lone")
    per_cycle, report["speedup"] = speedup(rows, lone, base.get("target_loss")) if lone else ([None] * len(rows),
                                                                                            None)
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


def mean_train_loss(row: dict) -> float | None:
    """Honest miners' mean training loss over a cycle's whole inner loop (every step's batch), averaged over the
    miners: a smoothed figure; the first and last batch alone differ by more than a cycle's progress."""
    values = [v for v in (row.get("train_loss_mean") or {}).values() if v is not None and v == v]
    return sum(values) / len(values) if values else None


def summary(report: dict) -> str:
    rows = report["per_cycle"]
    last = rows[-1]
    base = report.get("base") or {}
    trained = [(r["cycle"], mean_train_loss(r)) for r in rows if mean_train_loss(r) is not None]
    train_line = ([f"| honest miners' mean training loss over a cycle's inner loop, cycle {trained[0][0]} -> cycle "
                   f"{trained[-1][0]} (different batches each cycle) | {trained[0][1]:.4f} -> {trained[-1][1]:.4f} |"]
                  if len(trained) > 1 else [])
    lines = ["# Swarm simulation summary", "",
             f"{len(report['peers'])} peers, {report['cycles']} cycles; manifest `{report['manifest']}`.", "",
             (f"Losses, perplexities, drift and speedups are measured on {report['measured_on']}, never on a split a "
              "miner may train on." if report.get("measured_on") else
              "This report does not say which blocks its losses were measured on (made before reports named them)."),
             "",
             "| measure | value |", "|---|---|",
             *train_line,
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
             *_adversary_merge_lines(report),
             "", "## Per cycle", "",
             "| cycle | merged | target loss | target ppl | general ppl | general drift | full FT drift at same "
             "target loss | honest peers agree | speedup vs lone miner at this target loss | lone miner drift at "
             "same target loss | dense DiLoCo drift at same target loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        drift, full_drift = r.get("general_drift"), r.get("full_ft_drift_at_same_target_loss")
        others = r.get("drift_at_same_target_loss") or {}
        lines.append(f"| {r['cycle']} | {len(r['merged'])}: {', '.join(r['merged']) or '-'} | "
                     f"{_fmt(r['target_loss'])} | {_fmt(r['target_perplexity'])} | {_fmt(r['general_perplexity'])} | "
                     f"{_fmt(drift)} | {_fmt(full_drift)} | {'yes' if r['honest_agree'] else 'no'} | "
                     f"{_fmt(r.get('speedup_vs_lone'), 'x')} | {_fmt(others.get('lone'))} | "
                     f"{_fmt(others.get('dense_diloco'))} |")
    if (report.get("speedup") or {}).get("definition"):
        lines += ["", f"One speedup definition throughout: {report['speedup']['definition']}."]
    if report["adversaries_ever_merged"]:
        cycles = report.get("adversary_merged_cycles") or {}
        lines += ["", "## Adversaries", "",
                  "| peer | kind | merged in cycles | why it scored zero (first cycle seen) |", "|---|---|---|---|"]
        for name, merged in sorted(report["adversaries_ever_merged"].items()):
            why = next((r["rejected"][name] for r in rows if name in r["rejected"]), "not ranked / score 0")
            when = ", ".join(map(str, cycles.get(name, []))) or ("YES" if merged else "never")
            lines.append(f"| {name} | {report['peers'][name]['adversary']} | {when} | {why} |")
    if report.get("faults"):
        lines += ["", "## Faults", "", "| fault | what was done | per cycle: honest miners merged, agree | verdict |",
                  "|---|---|---|---|"]
        for f in report["faults"]:
            cycles = "; ".join(f"{s['cycle']}: {s['honest_miners_merged']}/{s['honest_miners']}, "
                               f"{'yes' if s['agree'] else 'no'}" for s in f["cycles"])
            lines.append(f"| {f['fault']} | {'; '.join(f['notes'])} | {cycles} | {f['verdict']} |")
    liars = [n for n, p in report["peers"].items() if p["adversary"] in ("liar", "stranger")]
    if liars:
        lines += ["", f"Misbehaving validators present: {', '.join(liars)}; merged sets above are the combined "
                  "(median) decision of the allowlisted validators."]
    return "\n".join(lines) + "\n"


def _adversary_merge_lines(report: dict) -> list[str]:
    """Which cycles merged an adversary's update: the headline figures include what those merges did."""
    merged = {n: c for n, c in (report.get("adversary_merged_cycles") or {}).items() if c}
    if not merged:
        return []
    return ["| adversaries merged (the figures above include their effect) | "
            + "; ".join(f"{n} in cycle{'s' if len(c) > 1 else ''} {', '.join(map(str, c))}"
                        for n, c in sorted(merged.items())) + " |"]


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
    if speed and speed.get("target_loss") is not None:
        lines.append(f"| speedup vs a lone miner at target loss {speed['target_loss']:.4f}, the lowest both reached "
                     f"(lone miner: {_fmt(speed.get('lone_cycles_to_it'), ' cycles')}, swarm: "
                     f"{_fmt(speed.get('swarm_cycles_to_it'), ' cycles')}) | {_fmt(speed.get('speedup'), 'x')} |")
    if final:
        names = {"swarm": "swarm", **{m: label for m, _, label in CURVES}}
        lines.append(f"| general drift at the swarm's final target loss {final['target_loss']:.4f} | "
                     + ", ".join(f"{names[k]} {_fmt(v)}" for k, v in final.items() if k in names) + " |")
    return lines
