"""The first adversaries: malformed or unearned payloads, late and copied commits, a lying validator."""

from __future__ import annotations

import secrets

import torch

from swarm.protocol.consensus import Score
from swarm.protocol.cyclelog import Cycle
from swarm.roles.miner import Miner, Submission
from swarm.roles.validator import Validator
from teft.state import parse_key, state_key, to_bytes


def corrupt(kind: str, honest: Submission, base: dict, dtype: torch.dtype, cycle: int) -> bytes:
    """The bytes a misbehaving miner sends instead of its honest Phi_i."""
    trained = honest.state
    g = torch.Generator().manual_seed(cycle + 7)
    if kind == "noise":
        bad = {k: v + 0.005 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    elif kind == "poison":  # the honest update, sign-flipped: as small as an honest one, but raises the loss
        bad = {k: base[k] - (trained[k] - base[k]) for k in base}
    elif kind == "nan":
        bad = {k: v.clone() for k, v in trained.items()}
        next(iter(bad.values())).view(-1)[0] = float("nan")
    elif kind == "oversize":
        return honest.payload + b"\0" * 4096
    elif kind == "wrong-shape":  # a transposed matrix: the same byte count, so only the shape check can tell
        bad = {k: v.clone() for k, v in trained.items()}
        first = next(k for k, v in bad.items() if v.dim() == 2 and v.shape[0] != v.shape[1])
        bad[first] = bad[first].t().contiguous()
    elif kind == "extra-keys":  # smuggle an unselected expert in place of a selected one, at the same size
        bad = {k: v.clone() for k, v in trained.items()}
        first = next(iter(bad))
        layer, expert, param = parse_key(first)
        taken = {parse_key(k)[1] for k in bad if parse_key(k)[0] == layer}
        other = next(e for e in range(10 ** (len(str(expert)) - 1), 10 ** len(str(expert))) if e not in taken)
        bad[state_key(layer, other, param)] = bad.pop(first)
    else:
        raise ValueError(f"unknown payload adversary {kind}")
    return to_bytes(bad, dtype)


def untrained(peer) -> Submission:
    """Phi_t as a submission: for misbehaving miners whose attack is not in the update, so that they spend
    no CPU training (a simulation runs two dozen peers on two cores, and honest miners must finish in time)."""
    return Submission(peer.state, to_bytes(peer.state, peer.rt.payload_dtype))


class PayloadMiner(Miner):
    """Sends corrupted bytes of the kind named by `variant`; only `poison` needs the honest update to flip."""

    def submission(self, cycle: Cycle) -> Submission | None:
        honest = super().submission(cycle) if self.variant == "poison" else untrained(self.peer)
        if honest is None:
            return None
        payload = corrupt(self.variant, honest, self.peer.state, self.peer.rt.payload_dtype, cycle.number)
        return Submission(honest.state, payload, honest.losses)


class Untrained(Miner):
    """A misbehaving miner whose attack is not in the update: it submits Phi_t and spends no CPU training."""

    def submission(self, cycle: Cycle) -> Submission | None:
        return untrained(self.peer)


class FreeRider(Untrained):
    """Submits Phi_t unchanged, hoping to be merged for nothing."""


class Replay(FreeRider):
    """Resubmits the payload of its first cycle in every later one."""

    first: str | None = None

    def submission(self, cycle: Cycle) -> Submission | None:
        data = self.peer.store.load_payload(self.first) if self.first else None
        if data is None:
            sub = super().submission(cycle)
            self.first = self.peer.store.save_payload(sub.payload)
            return sub
        return Submission({}, data)


def wait_into_reveal(peer, number: int, share: float = 0.5) -> None:
    """Sleep to `share` of the reveal phase (default its middle, where reveals stop counting), where honest
    reveals are visible and commits long closed."""
    start, end = peer.window(number, "reveal")
    peer.wait_until(start + (end - start) * share)


class Late(Untrained):
    """Commits halfway through the reveal phase, long after the commit deadline (never evaluated, so it
    need not train)."""

    def on_commit(self, cycle: Cycle) -> None:
        pass

    def on_reveal(self, cycle: Cycle) -> None:
        if self.payload:
            wait_into_reveal(self.peer, cycle.number)
            self.commit(cycle.number, self.payload[0])
            self.reveal(cycle.number, self.payload[0])


class Copycat(Miner):
    """Commits to nothing real, then reveals another miner's payload as its own."""

    def on_train(self, cycle: Cycle) -> None:
        if cycle.fresh:
            self.payload = (secrets.token_hex(32), b"")

    def on_reveal(self, cycle: Cycle) -> None:
        if not self.payload:
            return
        wait_into_reveal(self.peer, cycle.number, 0.3)  # while reveals still count: only the commit binds it
        others = {pid: s for pid, s in self.peer.get(cycle.number, "reveal").items() if pid != self.peer.me}
        if others:
            self.reveal(cycle.number, others[sorted(others)[0]].record.payload_hash)


class Liar(Validator):
    """An allowlisted validator that inverts its ranking: the worst get the best scores."""

    def ranking(self, scores: list[Score]) -> list[Score]:
        top = max((s.score for s in scores), default=0.0) + 1.0
        return [Score(s.miner, s.payload_hash, s.loss, top - s.score) for s in scores]
