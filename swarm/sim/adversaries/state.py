"""state-liar: claims a crafted Phi for this and the next cycles, and serves a checkpoint that does not fit;
state-forger: an allowlisted validator that publishes a crafted Phi of the right shapes, ground to win a tie.

A miner has no vote on the agreed state (only allowlisted validators' state records count), and any
checkpoint is checked against the run's expert map before a peer adopts it. The liar's checkpoint has
the honest byte count but a transposed tensor and one expert swapped for an unselected one, so only those
checks can tell it from a real one.
"""

from __future__ import annotations

import torch

from swarm.net import records
from swarm.protocol.cyclelog import Cycle
from swarm.roles.miner import Miner
from swarm.roles.validator import Validator
from teft.outer import checkpoint_bytes
from teft.state import ExpertState, parse_key, state_hash, state_key

AHEAD = 2  # state records for this cycle and the next ones: a horizon refuses those beyond the next


def crafted(state: ExpertState) -> ExpertState:
    """Same tensors and byte count as `state`, wrong shape in one place and one unselected expert."""
    bad = {k: v.clone() for k, v in state.items()}
    first = next(k for k, v in bad.items() if v.dim() == 2 and v.shape[0] != v.shape[1])
    bad[first] = bad[first].t().contiguous()
    layer, expert, param = parse_key(first)
    taken = {parse_key(k)[1] for k in bad if parse_key(k)[0] == layer}
    other = next(e for e in range(10 ** len(str(expert))) if e not in taken)
    bad[state_key(layer, other, param)] = bad.pop(first)
    return bad


class StateLiar(Miner):
    """Trains nothing; every cycle publishes and serves a crafted state for cycles c-1 .. c+AHEAD."""

    def __init__(self, peer):
        super().__init__(peer)
        self.crafted: dict[int, str] = {}  # cycle -> hash of the crafted checkpoint it claims

    def on_sync(self, cycle: Cycle) -> None:
        super().on_sync(cycle)
        p = self.peer
        data = checkpoint_bytes(crafted(p.state), crafted(p.momentum) if p.momentum else None)
        digest = p.store.save_payload(data)  # served by hash like any payload
        for c in range(max(cycle.number - 1, 0), cycle.number + AHEAD + 1):
            if p.put(c, "state", records.StateRecord(state_hash=digest)):
                self.crafted[c] = digest
        cycle.log.note += f"claims state {digest[:12]}; "

    def on_train(self, cycle: Cycle) -> None:
        pass


FORGE_TRIES = 256  # a crafted hash sorts before a given one in half the tries: 256 fail with odds 2^-256


def forge_below(state: ExpertState, momentum: ExpertState, below: str) -> tuple[str, bytes]:
    """A checkpoint of the run's exact shapes with the target experts zeroed, ground until its hash sorts before
    `below` (the honest one): a tie broken by the lowest hash would pick it."""
    zeroed = {k: torch.zeros_like(v) for k, v in state.items()}
    first = next(iter(zeroed))
    for nonce in range(FORGE_TRIES):
        zeroed[first].view(-1)[0] = nonce * 1e-12
        data = checkpoint_bytes(zeroed, momentum or None)
        digest = state_hash(data)
        if digest < below:
            break
    return digest, data


class StateForger(Validator):
    """An allowlisted validator that judges and ranks like an honest one, then publishes a crafted state hash
    in place of the one its reduce computed (a checkpoint with the target experts zeroed, ground to sort
    first) and serves that checkpoint. Against an honest majority it is outvoted; in a tie (an honest
    validator down for one reduce) it must agree on nothing, and the crafted state must not be adopted."""

    def on_reduce(self, cycle: Cycle) -> None:
        p, c = self.peer, cycle.number
        honest_put = p.put
        p.put = lambda number, kind, value: kind != "state" and honest_put(number, kind, value)  # keep its vote
        try:
            super().on_reduce(cycle)
        finally:
            del p.put
        honest = cycle.log.state_hash
        if not honest:
            return
        digest, data = forge_below(p.state, p.momentum, honest)
        p.store.save_payload(data)
        stored = p.put(c, "state", records.StateRecord(state_hash=digest))
        cycle.log.note += f"published crafted state {digest[:12]} ({'stored' if stored else 'refused'}); "
