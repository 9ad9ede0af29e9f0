"""Scripted faults for a simulation: a partition (network lab only), the bootstrap node killed, a peer frozen.

    --partition HOSTS@CYCLE:SECONDS   cut these hosts (comma list) off the lab's internet when CYCLE begins,
                                      heal them SECONDS later
    --kill-bootstrap CYCLE            SIGKILL the bootstrap node when CYCLE begins (everyone joined before)
    --freeze PEER@CYCLE:SECONDS       SIGSTOP a peer's processes (the peer, its DHT child, its p2pd) when
                                      CYCLE begins, SIGCONT them SECONDS later

The report says per fault what happened and how many cycles it cost (swarm.sim.report.fault_rows).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

from swarm.errors import SwarmError
from swarm.net.reap import children_by_parent


@dataclass
class Fault:
    kind: str  # partition, kill-bootstrap, freeze
    targets: list[str]
    cycle: int
    seconds: float = 0.0
    started: float | None = None  # wall time it was applied
    ended: float | None = None  # wall time it was undone (partition, freeze)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        span = f" for {self.seconds:g}s" if self.seconds else ""
        return f"{self.kind} {','.join(self.targets)} at cycle {self.cycle}{span}"


def _spec(value: str, flag: str) -> tuple[list[str], int, float]:
    """NAMES@CYCLE:SECONDS -> (names, cycle, seconds), or a one-line error naming the expected form."""
    try:
        names, when = value.split("@", 1)
        cycle, seconds = when.split(":", 1)
        parsed = [n for n in names.split(",") if n], int(cycle), float(seconds)
    except ValueError:
        raise SwarmError(f"{flag} {value!r}: expected NAMES@CYCLE:SECONDS, e.g. miner-1@2:40") from None
    if not parsed[0] or parsed[1] < 0 or parsed[2] <= 0:
        raise SwarmError(f"{flag} {value!r}: name at least one peer, a cycle >= 0 and seconds > 0")
    return parsed


def parse_faults(partitions: list[str], kill_bootstrap: int | None, freezes: list[str],
                 names: set[str]) -> list[Fault]:
    """The faults the command line asks for, each checked against the peers' names (`bootstrap` included)."""
    faults = []
    for value in partitions or []:
        targets, cycle, seconds = _spec(value, "--partition")
        faults.append(Fault("partition", targets, cycle, seconds))
    for value in freezes or []:
        targets, cycle, seconds = _spec(value, "--freeze")
        faults.append(Fault("freeze", targets, cycle, seconds))
    if kill_bootstrap is not None:
        if kill_bootstrap < 1:
            raise SwarmError("--kill-bootstrap CYCLE: the cycle must be >= 1 (every peer joins before cycle 0)")
        faults.append(Fault("kill-bootstrap", ["bootstrap"], kill_bootstrap))
    for fault in faults:
        unknown = [t for t in fault.targets if t not in names]
        if unknown:
            raise SwarmError(f"--{fault.kind} names {', '.join(unknown)}, not a peer of this run; choose from "
                             f"{', '.join(sorted(names))}")
    return faults


def process_tree(pid: int) -> list[int]:
    """pid and every process below it (p2pd sits in a process group of its own, so a group signal misses it)."""
    children = children_by_parent()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def signal_tree(pid: int, sig: int) -> int:
    """Send `sig` to a process and all its descendants; how many got it."""
    sent = 0
    for p in process_tree(pid):
        try:
            os.kill(p, sig)
            sent += 1
        except ProcessLookupError:
            pass
    return sent


FREEZE, THAW = signal.SIGSTOP, signal.SIGCONT
