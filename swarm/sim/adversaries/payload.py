"""The first adversaries: malformed or unearned payloads, late and copied commits, a lying validator."""

from __future__ import annotations

import secrets
from collections import OrderedDict

import torch

from swarm.protocol.consensus import Score
from swarm.protocol.cyclelog import Cycle
from swarm.roles.miner import Miner, Submission
from swarm.roles.validator import Validator
from teft.codec import HEADER_SIZE, Codec
from teft.state import parse_key, state_key


def corrupt(kind: str, honest: Submission, base: dict, codec: Codec, cycle: int) -> bytes:
    """The bytes a misbehaving miner sends instead of its honest payload, encoded by the run's codec."""
    g = torch.Generator().manual_seed(cycle + 7)
    zero = {k: torch.zeros_like(v) for k, v in base.items()}
    if kind == "noise":
        return codec.encode({k: 0.005 * torch.randn(v.shape, generator=g) for k, v in base.items()})
    if kind == "poison":  # the honest update, sign-flipped: as small as an honest one, but raises the loss
        return codec.encode({k: -v for k, v in honest.delta.items()})
    if kind == "nan":  # the first number after the header is a float of every codec (a value, or a scale)
        data = bytearray(codec.encode({k: v + 0.01 for k, v in zero.items()}))
        nan = {"bf16": b"\xc0\x7f", "fp16": b"\x00\x7e"}.get(codec.spec.codec, b"\x00\x00\xc0\x7f")  # LE NaNs
        data[HEADER_SIZE:HEADER_SIZE + len(nan)] = nan
        return bytes(data)
    if kind == "oversize":
        return honest.payload + b"\0" * 4096
    shapes = OrderedDict(codec.shapes)
    if kind == "wrong-shape":  # a transposed matrix: the same byte count, so only the layout digest can tell
        first = next(k for k, s in shapes.items() if len(s) == 2 and s[0] != s[1])
        shapes[first] = shapes[first][::-1]
    elif kind == "extra-keys":  # smuggle an unselected expert in place of a selected one, at the same size
        first = next(iter(shapes))
        layer, expert, param = parse_key(first)
        taken = {parse_key(k)[1] for k in shapes if parse_key(k)[0] == layer}
        other = next(e for e in range(10 ** (len(str(expert)) - 1), 10 ** len(str(expert))) if e not in taken)
        shapes[state_key(layer, other, param)] = shapes.pop(first)
    else:
        raise ValueError(f"unknown payload adversary {kind}")
    other = Codec(codec.spec, shapes)
    return other.encode_flat(torch.full((other.numel,), 0.01))


def untrained(peer, cycle: int, exact: bool = False) -> Submission:
    """Phi_t as a submission, for misbehaving miners whose attack is not in the update, so that they spend no
    CPU training (a simulation runs two dozen peers on two cores, and honest miners must finish in time): a delta
    that is zero but for one token number that names the cycle, so each cycle's bytes are new (the replay memory
    would refuse a repeat before the attack is reached); `exact`: the zero delta itself."""
    delta = {k: torch.zeros_like(v) for k, v in peer.state.items()}
    if not exact:
        next(iter(delta.values())).view(-1)[0] = 1e-3 * (cycle + 1)
    return Submission(peer.state, peer.rt.codec.encode(delta), delta=delta)


class PayloadMiner(Miner):
    """Sends corrupted bytes of the kind named by `variant`; only `poison` needs the honest update to flip."""

    def submission(self, cycle: Cycle) -> Submission | None:
        honest = super().submission(cycle) if self.variant == "poison" else untrained(self.peer, cycle.number)
        if honest is None:
            return None
        payload = corrupt(self.variant, honest, self.peer.state, self.peer.rt.codec, cycle.number)
        return Submission(honest.state, payload, honest.losses)


class Untrained(Miner):
    """A misbehaving miner whose attack is not in the update: it submits Phi_t and spends no CPU training."""

    def submission(self, cycle: Cycle) -> Submission | None:
        return untrained(self.peer, cycle.number)


class FreeRider(Untrained):
    """Submits Phi_t unchanged (a zero delta), hoping to be merged for nothing: the same bytes every cycle, so
    from its second cycle on the replay memory refuses it before the zero delta is seen."""

    def submission(self, cycle: Cycle) -> Submission | None:
        return untrained(self.peer, cycle.number, exact=True)


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
