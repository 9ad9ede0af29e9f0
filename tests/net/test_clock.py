"""Clock arithmetic: cycle and phase from time alone."""

from __future__ import annotations

import pytest

from swarm.protocol.clock import PHASES, Clock

PH = [("sync", 10.0), ("train", 60.0), ("commit", 5.0), ("reveal", 5.0), ("evaluate", 15.0), ("reduce", 5.0)]
G = 1_000_000.0


def test_cycle_length_and_phases():
    clock = Clock(G, PH)
    assert clock.cycle_length == 100.0
    assert clock.where(G) == (0, "sync", 0.0, 10.0)
    assert clock.where(G + 9.5) == (0, "sync", 9.5, 0.5)
    assert clock.where(G + 10) == (0, "train", 0.0, 60.0)
    assert clock.where(G + 72) == (0, "commit", 2.0, 3.0)
    assert clock.where(G + 75) == (0, "reveal", 0.0, 5.0)
    assert clock.where(G + 99.999).phase == "reduce"
    assert clock.where(G + 100) == (1, "sync", 0.0, 10.0)
    assert clock.where(G + 12_385.5) == (123, "evaluate", 5.5, 9.5)


def test_before_genesis():
    clock = Clock(G, PH)
    cycle, phase, into, left = clock.where(G - 30)
    assert (cycle, phase, into, left) == (-1, "genesis", 0.0, 30.0)


def test_phase_start_inverts_where():
    clock = Clock(G, PH)
    for cycle in (0, 1, 7, 1000):
        for name in PHASES:
            start = clock.phase_start(cycle, name)
            pos = clock.where(start)
            assert (pos.cycle, pos.phase) == (cycle, name)
            assert pos.seconds_into_phase == pytest.approx(0.0, abs=1e-6)
            assert clock.where(clock.phase_end(cycle, name) - 1e-3).phase == name
    assert clock.cycle_start(3) == G + 300


def test_fractional_lengths_at_boundaries():
    clock = Clock(0.1, [(n, 0.1) for n in PHASES])
    for cycle in range(0, 50):
        assert clock.where(clock.cycle_start(cycle)).cycle in (cycle, cycle - 1)
        assert clock.where(clock.cycle_start(cycle) + 0.05) == pytest.approx((cycle, "sync", 0.05, 0.05))


def test_bad_schedules():
    with pytest.raises(ValueError, match="in this order"):
        Clock(G, list(reversed(PH)))
    with pytest.raises(ValueError, match="positive"):
        Clock(G, [(n, 0.0 if n == "commit" else 1.0) for n in PHASES])
    with pytest.raises(ValueError):
        Clock(G, PH).phase_start(0, "nap")
