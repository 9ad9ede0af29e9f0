"""The simulation report: matched-loss drift interpolation, plots and summary from a report dict."""

import pytest
import torch

from swarm.sim.report import _interp_drift, add_drift, add_speedup, cycles_to_reach, write_outputs


def test_drift_interpolates_from_the_base_model():
    base = {"target_loss": 2.5, "general_loss": 1.0}
    curve = [{"target_loss": 1.5, "general_loss": 1.2}, {"target_loss": 1.0, "general_loss": 1.6}]
    assert _interp_drift(curve, base, 2.0) == pytest.approx(0.1)  # halfway from the base to the first point
    assert _interp_drift(curve, base, 1.25) == pytest.approx(0.4)
    assert _interp_drift(curve, base, 0.5) is None  # outside what the baseline reached


def test_drift_columns_count_the_cycles_the_swarm_forgets_less():
    base = {"target_loss": 2.5, "general_loss": 1.0}
    rows = [{"target_loss": 2.0, "general_loss": 1.05},   # full FT drifts 0.1 here: the swarm less
            {"target_loss": 1.25, "general_loss": 1.5},   # full FT drifts 0.4 here: the swarm more
            {"target_loss": 0.5, "general_loss": 1.9},    # beyond the baseline's reach: not compared
            {"target_loss": None, "general_loss": None}]  # no validator reported
    report = {"base": base, "per_cycle": rows, "baseline": {"full": [{"target_loss": 1.5, "general_loss": 1.2},
                                                                     {"target_loss": 1.0, "general_loss": 1.6}]}}
    add_drift(report)
    assert [r["general_drift"] for r in rows] == pytest.approx([0.05, 0.5, 0.9, None])
    assert [r["full_ft_drift_at_same_target_loss"] for r in rows] == pytest.approx([0.1, 0.4, None, None])
    assert report["drift_vs_full_ft"] == {"cycles_compared": 2, "cycles_swarm_drifts_less": 1}


def _curve(targets, generals):
    pairs = enumerate(zip(targets, generals, strict=True))
    return [{"cycle": c, "target_loss": t, "general_loss": g} for c, (t, g) in pairs]


def test_cycles_to_reach_interpolates_from_the_base_model():
    lone = _curve([1.8, 1.6, 1.4, 1.2], [1.0] * 4)
    assert cycles_to_reach(lone, 2.0, 1.9) == pytest.approx(0.5)
    assert cycles_to_reach(lone, 2.0, 1.3) == pytest.approx(3.5)
    assert cycles_to_reach(lone, 2.0, 2.5) == 0.0  # the base model is already there
    assert cycles_to_reach(lone, 2.0, 1.1) is None  # never reached
    bumpy = _curve([1.5, 1.7, 1.0], [1.0] * 3)  # the first crossing counts, not a later one
    assert cycles_to_reach(bumpy, 2.0, 1.6) == pytest.approx(0.8)


def test_speedup_and_drift_fields_come_from_the_curves():
    base = {"target_loss": 2.0, "general_loss": 1.0}
    rows = _curve([1.6, 1.3, 1.1], [1.05, 1.1, 1.2])
    baseline = {"lone": _curve([1.8, 1.6, 1.4, 1.2], [1.02, 1.04, 1.06, 1.08]),
                "dense_diloco": _curve([1.5, 1.0], [1.25, 1.65]),
                "full": _curve([1.2], [1.4])}
    report = {"base": base, "per_cycle": rows, "baseline": baseline}
    add_drift(report)
    add_speedup(report)
    # the lone miner needs 2 cycles for 1.6 (1 swarm cycle) and 3.5 for 1.3 (2 swarm cycles); 1.1 it never reaches
    assert [r["speedup_vs_lone"] for r in rows] == pytest.approx([2.0, 1.75, None])
    # its final loss 1.2 after 4 cycles; the swarm gets there halfway through its third cycle
    # the headline, by the same definition at the lowest loss both reached (the lone miner's final 1.2 after 4
    # cycles); the swarm gets there halfway through its third cycle
    headline = dict(report["speedup"])
    assert headline.pop("definition").startswith("speedup at a target loss L = cycles a lone miner needs")
    assert headline == pytest.approx({"target_loss": 1.2, "lone_cycles_to_it": 4.0, "swarm_cycles_to_it": 2.5,
                                      "speedup": 1.6, "lone_cycles": 4, "lone_final_target_loss": 1.2,
                                      "swarm_cycles_to_lone_final": 2.5})
    # dense DiLoCo at target 1.3: 0.4 of the way from (1.5, +0.25) to (1.0, +0.65)
    assert rows[1]["drift_at_same_target_loss"]["dense_diloco"] == pytest.approx(0.41)
    assert rows[1]["drift_at_same_target_loss"]["lone"] == pytest.approx(0.07)
    assert rows[0]["drift_at_same_target_loss"]["full"] == pytest.approx(0.4 * 0.5)  # from the base to (1.2, 0.4)
    assert rows[2]["drift_at_same_target_loss"] == {"lone": None, "dense_diloco": pytest.approx(0.57), "full": None}
    assert report["drift_at_final_target_loss"] == pytest.approx(
        {"target_loss": 1.1, "swarm": 0.2, "lone": None, "dense_diloco": 0.57, "full": None})


def test_every_speedup_is_time_to_first_reach_a_loss_for_both_curves():
    """One definition for the per-cycle column and the headline: a swarm that slips back holds a loss it first
    reached earlier, and a lone miner that got further sets the headline at the swarm's best loss."""
    from swarm.sim.report import speedup, speedup_at

    lone = _curve([1.8, 1.6, 1.4, 1.2], [1.0] * 4)
    swarm = _curve([1.7, 1.5, 1.6], [1.0] * 3)
    per_cycle, headline = speedup(swarm, lone, 2.0)
    # 1.7: lone 1.5 cycles, swarm 1; 1.5: lone 2.5, swarm 2; 1.6 (slipped back): lone 2, swarm first at 1.5
    assert per_cycle == pytest.approx([1.5, 1.25, 2.0 / 1.5])
    # the lone miner got further (1.2) than the swarm (1.5): the headline is at 1.5, the per-cycle value there
    assert headline["target_loss"] == 1.5 and headline["speedup"] == pytest.approx(per_cycle[1])
    assert headline["swarm_cycles_to_lone_final"] is None
    assert speedup_at(swarm, lone, 2.0, 1.0)["speedup"] is None  # neither got there


def test_outputs(tmp_path):
    peers = {"miner-0": {"role": "miner", "adversary": None}, "miner-nan": {"role": "miner", "adversary": "nan"},
             "validator-0": {"role": "validator", "adversary": None}}
    rows = [{"cycle": c, "merged": ["miner-0"], "combined": {"miner-0": 0.2, "miner-nan": 0.0},
             "target_loss": 2.0 - 0.3 * c, "general_loss": 1.1 + 0.05 * c, "target_perplexity": 1.0,
             "general_perplexity": 1.0, "honest_agree": True, "train_loss": {"miner-0": [2.0, 1.8 + 0.4 * c]},
             "train_loss_mean": {"miner-0": 1.9 - 0.1 * c},
             "bytes": {"miner-0": {"in": 0, "out": 100}}, "rejected": {"miner-nan": "has non-finite values"}}
            for c in range(3)]
    report = {"manifest": "run.yaml", "cycles": 3, "payload_bytes": 100, "dense_model_bytes": 1000,
              "base": {"target_loss": 2.3, "general_loss": 1.0}, "peers": peers, "per_cycle": rows,
              "adversaries_ever_merged": {"miner-nan": False}, "all_cycles_agree": True,
              "baseline": {"full": [{"cycle": 0, "target_loss": 1.0, "general_loss": 1.5}],
                           "lone": [{"cycle": c, "target_loss": 2.15 - 0.1 * c, "general_loss": 1.0} for c in range(3)],
                           "dense_diloco": [{"cycle": 0, "target_loss": 1.5, "general_loss": 1.6}]}}
    write_outputs(report, tmp_path)
    for name in ("target_loss.png", "general_perplexity.png", "bytes.png", "scores.png", "progress.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.md").read_text()
    assert "| miner-nan | nan | never | has non-finite values |" in summary
    # the smoothed training loss (the inner loop's mean), not its single last batch, which rose here
    assert "cycle 0 -> cycle 2 (different batches each cycle) | 1.9000 -> 1.7000 |" in summary
    assert "2.6000" not in summary.split("## Per cycle")[0]
    assert "10.0x the payload" in summary and "| honest peers agreed on the state hash every cycle | yes |" in summary
    # cycle 0: target 2.0 is 0.3/1.3 of the way from the base (2.3) to the full-FT point (1.0, drift 0.5)
    assert "| 0 | 1: miner-0 | 2.0000 | 1.0000 | 1.0000 | 0.1000 | 0.1154 | yes |" in summary
    assert "| general drift below full fine-tuning's at the same target loss | 3 of 3 cycles |" in summary
    # lone miner: 2.15, 2.05, 1.95 after 1..3 cycles from 2.3, so 2.5 cycles for the swarm's 2.0 after 1 cycle;
    # dense DiLoCo at 2.0: 0.3/0.8 of the way from the base to (1.5, drift 0.6)
    assert "| 0 | 1: miner-0 | 2.0000 | 1.0000 | 1.0000 | 0.1000 | 0.1154 | yes | 2.50x | 0.0000 | 0.2250 |" in summary
    assert ("| speedup vs a lone miner at target loss 1.9500, the lowest both reached (lone miner: 3.00 cycles, "
            "swarm: 1.17 cycles) | 2.57x |") in summary
    assert "One speedup definition throughout: speedup at a target loss L" in summary
    assert (tmp_path / "report.json").read_text().count('"speedup_vs_lone"') == 3


def _honest_report(cycles: int = 3) -> dict:
    peers = {name: {"role": role, "adversary": None} for name, role in
             (("miner-0", "miner"), ("miner-1", "miner"), ("miner-2", "miner"), ("validator-0", "validator"))}
    same = {"in": 0, "out": 100_000}
    rows = [{"cycle": c, "merged": ["miner-0"], "combined": {"miner-0": 0.2, "miner-1": 0.1},
             "target_loss": 2.0 - 0.1 * c, "general_loss": 1.1, "target_perplexity": 1.0, "general_perplexity": 1.0,
             "honest_agree": True, "train_loss": {}, "rejected": {},
             "bytes": {"miner-0": same, "miner-1": same, "miner-2": {"in": 0, "out": 200_000 * (c + 1)},
                       "validator-0": {"in": 0, "out": 0}}} for c in range(cycles)]
    return {"payload_bytes": 100_000, "dense_model_bytes": 1_000_000, "base": {}, "peers": peers, "per_cycle": rows}


def test_summary_names_the_cycles_an_adversary_was_merged_and_where_losses_were_measured(tmp_path):
    report = _honest_report()
    report["peers"]["miner-val-overfit"] = {"role": "miner", "adversary": "val-overfit"}
    report["per_cycle"][0]["merged"] = ["miner-0", "miner-val-overfit"]
    report["per_cycle"][2]["merged"] = ["miner-val-overfit"]
    report.update(manifest="run.yaml", cycles=3, all_cycles_agree=True, measured_on="the test split of math",
                  adversaries_ever_merged={"miner-val-overfit": True})
    from swarm.sim.report import merged_cycles

    report["adversary_merged_cycles"] = merged_cycles(report["per_cycle"], ["miner-val-overfit"])
    assert report["adversary_merged_cycles"] == {"miner-val-overfit": [0, 2]}
    write_outputs(report, tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "| adversaries merged (the figures above include their effect) | miner-val-overfit in cycles 0, 2 |" \
        in summary
    assert "| miner-val-overfit | val-overfit | 0, 2 |" in summary
    assert "measured on the test split of math, never on a split a miner may train on" in summary


def test_bytes_plot_starts_at_zero_and_shows_a_peer_that_sent_nothing():
    import matplotlib.pyplot as plt

    from swarm.sim.plots import figures

    report = _honest_report()
    fig = figures(report)["bytes.png"]
    try:
        ax = fig.axes[0]
        assert ax.get_ylim()[0] == 0
        silent = [line for line in ax.lines if line.get_label() == "validator-0: sent nothing"]
        assert len(silent) == 1 and list(silent[0].get_ydata()) == [0, 0, 0]
        assert "validator-0: sent nothing" in [t.get_text() for t in ax.get_legend().get_texts()]
    finally:
        plt.close("all")


def test_baseline_points_between_cycles_are_on_a_labelled_axis():
    """The token-budget baselines are evaluated every quarter cycle's tokens (x = -0.75 .. 0 for cycle 0):
    a top axis counts the cycles' worth of tokens, so every point has a label, and the base model sits at 0."""
    import matplotlib.pyplot as plt

    from swarm.sim.plots import figures

    report = _honest_report()
    report["base"] = {"target_loss": 2.3, "general_loss": 1.0}
    report["baseline"] = {"full": [{"cycle": (s + 1) / 4 - 1, "target_loss": 2.2 - 0.05 * s, "general_loss": 1.1}
                                   for s in range(12)]}
    figs = figures(report)
    try:
        for name in ("target_loss.png", "general_perplexity.png"):
            ax = figs[name].axes[0]
            full = next(line for line in ax.lines if line.get_label().startswith("full fine-tuning"))
            assert min(full.get_xdata()) == -0.75 and ax.get_xlim()[0] <= -1
            tops = [a for a in ax.child_axes if "training tokens" in a.get_xlabel()]
            assert tops, name  # the secondary axis that labels x < 0
            base = next(line for line in ax.lines if line.get_label() == "base model (no training)")
            assert list(base.get_xdata()) == [-1]  # 0 cycles' worth of tokens on the top axis
    finally:
        plt.close("all")


def test_plots_number_cycles_from_zero_on_whole_ticks_and_show_every_peer():
    import matplotlib.pyplot as plt

    from swarm.sim.plots import byte_groups, figures

    report = _honest_report()
    figs = figures(report)
    try:
        for name, fig in figs.items():
            ax = fig.axes[0]
            fig.canvas.draw()
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)
            assert min(ax.lines[0].get_xdata()) == 0, name  # as summary.md numbers them
        assert "adversar" not in figs["scores.png"].axes[0].get_title()  # none in this run
        labels = [line.get_label() for line in figs["bytes.png"].axes[0].lines]
        assert "miner-0, miner-1 (identical)" in labels and "miner-2" in labels  # no line hidden under another
        assert byte_groups(report) == [(["miner-0", "miner-1"], [0.1, 0.1, 0.1]), (["miner-2"], [0.2, 0.4, 0.6]),
                                       (["validator-0"], [0.0, 0.0, 0.0])]
    finally:
        for fig in figs.values():
            plt.close(fig)


def _manifest(tmp_path, data: dict | None = None):
    from swarm.launch import write_manifest
    from swarm.net.identity import load_or_create
    from swarm.protocol.manifest import load

    key = load_or_create(tmp_path / "v.key").public_key_str
    return load(write_manifest("configs/tiny.yaml", tmp_path / "run" / "run.yaml", [key], 1.9e9,
                               {"quorum": 1, **({"data": data} if data else {})}))


def test_reports_measure_the_test_split_which_no_role_reads(tmp_path):
    """Miners train on `train` (val-overfit on `validation`), validators check `validation`: the report's blocks
    come from `test`, for the target and the general domain alike."""
    from swarm.protocol.runtime import REPORT_BLOCKS, report_data
    from teft.data import load_texts, make_byte_tokenizer, tokenize_blocks

    manifest, tok = _manifest(tmp_path), make_byte_tokenizer()
    seq = manifest.data.seq_len
    validation = tokenize_blocks(tok, load_texts("math", "validation"), seq, 200 * seq)
    general = tokenize_blocks(tok, load_texts("general", "validation"), seq, 40 * seq)
    target, general_report, kept, source = report_data(manifest, tok, validation, general)
    assert kept is validation and source == "the test split of math; general: the test split of general"
    assert torch.equal(target, tokenize_blocks(tok, load_texts("math", "test"), seq)[:REPORT_BLOCKS])
    assert torch.equal(general_report, tokenize_blocks(tok, load_texts("general", "test"), seq)[:REPORT_BLOCKS])
    seen = {tuple(r) for r in validation.tolist()} | {tuple(r) for r in general.tolist()}
    assert not seen & ({tuple(r) for r in target.tolist()} | {tuple(r) for r in general_report.tolist()})


def test_data_without_a_test_split_sets_blocks_aside_that_no_role_reads(tmp_path):
    import gzip
    import json

    from swarm.protocol.runtime import REPORT_BLOCKS, report_data
    from teft.data import make_byte_tokenizer

    path = tmp_path / "run" / "val.jsonl.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps({"text": "x"}) + "\n")
    manifest, tok = _manifest(tmp_path, {"validation": "val.jsonl.gz"}), make_byte_tokenizer()
    validation = torch.arange(100 * 8).view(100, 8)
    target, _, kept, source = report_data(manifest, tok, validation, None)
    assert torch.equal(target, validation[-REPORT_BLOCKS:]) and torch.equal(kept, validation[:-REPORT_BLOCKS])
    assert source.startswith(f"the last {REPORT_BLOCKS} blocks of val.jsonl.gz (it has no test split")
    # too few to spare 32: measured on them anyway, and the report says a miner may have trained on them
    target, _, kept, source = report_data(manifest, tok, validation[:50], None)
    assert kept.shape[0] == 50 and torch.equal(target, kept) and "a miner may have trained on them" in source
