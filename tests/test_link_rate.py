"""A peer's link rate: bytes over the seconds a transfer was moving bytes, overlapping transfers counted once."""

from __future__ import annotations

from swarm.net import wire
from swarm.net.wire import TransferStats


def test_busy_time_counts_overlaps_once(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(wire.time, "monotonic", lambda: now[0])
    stats = TransferStats()
    stats.begin("out")  # 100: one serve starts
    now[0] = 101.0
    stats.begin("out")  # 101: a second one overlaps it
    now[0] = 103.0
    stats.end("out")
    assert stats.busy("out") == 3.0  # still running: counted up to now
    now[0] = 104.0
    stats.end("out")  # 104: both done, busy 100..104
    now[0] = 110.0
    stats.begin("out")
    now[0] = 112.0
    stats.end("out")  # 110..112 after an idle gap that does not count
    assert stats.busy_out == 6.0 and stats.busy("in") == 0.0
