"""What one cycle looks like to a role, and what it leaves behind: one JSON line per cycle in metrics.jsonl."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CycleLog:
    """What one cycle did, written as one JSON line to metrics.jsonl and summarised in the log."""

    cycle: int
    role: str
    peer: str
    variant: str | None = None  # a simulation's misbehaving variant of the role; None for honest peers
    submitted: str | None = None
    train_loss: list[float] = field(default_factory=list)  # the inner loop's first and last batch
    train_loss_mean: float | None = None  # over every batch of the inner loop: the figure a trend can use
    scores: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    evaluated: list[str] = field(default_factory=list)  # miners whose payload a validator scored by Proof-of-Loss
    base_loss: float | None = None
    rankings: dict[str, dict[str, float]] = field(default_factory=dict)  # validator -> miner -> score
    medians: dict[str, float] = field(default_factory=dict)  # miner -> combined score of its best payload
    merged: list[str] = field(default_factory=list)
    quorum_met: bool = False
    state_hash: str = ""
    agreed_hash: str = ""
    state_votes: dict[str, str] = field(default_factory=dict)  # allowlisted validator -> the state hash it published
    state_dissent: list[str] = field(default_factory=list)  # allowlisted validators that published another state
    state_silent: list[str] = field(default_factory=list)  # allowlisted validators that published no state
    target_loss: float | None = None  # of Phi_{c+1}, on fixed blocks (validators)
    general_loss: float | None = None
    start_target_loss: float | None = None  # of Phi_c, measured once when a validator starts
    start_general_loss: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    rate_in: float | None = None  # bytes/s received while a fetch was moving bytes (None: nothing fetched)
    rate_out: float | None = None  # bytes/s served while a serve was moving bytes: what this link carried
    phase_seconds: dict[str, float] = field(default_factory=dict)  # time the role worked in each phase
    phase_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds this process spent in each phase
    note: str = ""


@dataclass
class Cycle:
    """One cycle as a role sees it: its number, whether the peer joined in time to submit, and its log."""

    number: int
    fresh: bool  # joined in sync or train: may commit a payload or a seed this cycle
    log: CycleLog
