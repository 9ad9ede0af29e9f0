"""Cycle and phase as pure functions of DHT time, so no coordinator has to announce them."""

from __future__ import annotations

import math
import threading
from typing import NamedTuple, Protocol

PHASES: tuple[str, ...] = ("sync", "train", "commit", "reveal", "evaluate", "reduce")
GENESIS = "genesis"


class Position(NamedTuple):
    """Where a moment falls in the schedule; unpacks as (cycle, phase, into, left)."""

    cycle: int
    phase: str
    seconds_into_phase: float
    seconds_left_in_phase: float


class Clock:
    """The run's fixed schedule: cycles of the six phases back to back from genesis."""

    def __init__(self, genesis: float, phases: list[tuple[str, float]]):
        names = tuple(name for name, _ in phases)
        if names != PHASES:
            raise ValueError(f"phases must be {', '.join(PHASES)} in this order, got {', '.join(names)}")
        for name, seconds in phases:
            if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"phase {name} must last a positive number of seconds, got {seconds!r}")
        if not math.isfinite(genesis):
            raise ValueError(f"genesis must be a finite unix time, got {genesis!r}")
        self.genesis = float(genesis)
        self.phases: tuple[tuple[str, float], ...] = tuple((n, float(s)) for n, s in phases)
        self._offsets: dict[str, float] = {}
        offset = 0.0
        for name, seconds in self.phases:
            self._offsets[name] = offset
            offset += seconds
        self.cycle_length = offset

    def __repr__(self) -> str:
        return f"Clock(genesis={self.genesis}, phases={list(self.phases)})"

    def where(self, t: float) -> Position:
        """Cycle and phase at time t (pass get_dht_time()); before genesis: cycle -1, phase 'genesis'."""
        if t < self.genesis:
            return Position(-1, GENESIS, 0.0, self.genesis - t)
        elapsed = t - self.genesis
        cycle = math.floor(elapsed / self.cycle_length)
        offset = elapsed - cycle * self.cycle_length
        if offset >= self.cycle_length:  # float rounding at a cycle boundary
            cycle, offset = cycle + 1, offset - self.cycle_length
        offset = max(offset, 0.0)
        for name, seconds in self.phases:
            start = self._offsets[name]
            if offset < start + seconds or name == PHASES[-1]:
                into = offset - start
                return Position(cycle, name, into, max(seconds - into, 0.0))
        raise AssertionError("unreachable")

    def phase_start(self, cycle: int, phase: str) -> float:
        """Absolute time the phase of that cycle begins, for sleeping until it."""
        if phase not in self._offsets:
            raise ValueError(f"unknown phase {phase!r}: expected one of {', '.join(PHASES)}")
        if cycle < 0:
            raise ValueError(f"cycle must be >= 0, got {cycle}")
        return self.genesis + cycle * self.cycle_length + self._offsets[phase]

    def phase_end(self, cycle: int, phase: str) -> float:
        """Absolute time the phase of that cycle ends (the next phase's start)."""
        return self.phase_start(cycle, phase) + dict(self.phases)[phase]

    def cycle_start(self, cycle: int) -> float:
        """Absolute time a cycle begins."""
        return self.phase_start(cycle, PHASES[0])


class Timekeeper(Protocol):
    """DHT time and sleeping on it; the unit tests drive whole cycles on a virtual one."""

    def now(self) -> float: ...

    def wait_until(self, t: float, stop: threading.Event) -> bool: ...


class DHTTime:
    """hivemind's DHT time, slept on in short steps so a stop request is seen within a quarter second."""

    def now(self) -> float:
        from swarm.net.dht import dht_time

        return dht_time()

    def wait_until(self, t: float, stop: threading.Event) -> bool:
        while not stop.is_set():
            left = t - self.now()
            if left <= 0:
                return True
            stop.wait(min(left, 0.25))
        return False
