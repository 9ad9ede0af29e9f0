"""val-overfit: trains on the manifest's public validation split instead of its own train shard.

If validators scored on data miners can see, a miner that fitted it would outscore honest ones. Validators
that score on private held-out data see that split as ordinary in-domain text: the update is worth what it
generalizes, no more, and one that gains far more on the public split than on held-out data scores zero.
Measured on tiny with the same H as honest miners, its gain on the public split (0.065-0.075 nats) and on
held-out data were in the honest range; the outsized scores seen before came from training many more steps,
which held-out scoring rewards only as far as they generalize. It stays under max_delta_norm.
"""

from __future__ import annotations

import copy

import torch

from swarm.protocol.cyclelog import Cycle
from swarm.roles.miner import Miner, Submission, encode_state, train_submission
from teft.state import ExpertState
from teft.train import Interrupted

STEPS_FACTOR = 1  # inner steps: this many times the manifest's H (the same work as an honest miner)
NORM_MARGIN = 0.95  # of max_delta_norm


def delta_norm(state: ExpertState, base: ExpertState) -> float:
    return float(sum((state[k].float() - base[k].float()).pow(2).sum() for k in base)) ** 0.5


def within_norm(state: ExpertState, base: ExpertState, bound: float) -> ExpertState:
    """The update scaled down, if needed, to just under the bound the validators check."""
    norm = delta_norm(state, base)
    if norm <= bound:
        return state
    return {k: base[k] + (state[k] - base[k]) * (bound / norm) for k in base}


class ValOverfit(Miner):
    """Honest training code, pointed at the validation split, for STEPS_FACTOR x H steps."""

    def submission(self, cycle: Cycle) -> Submission | None:
        p = self.peer
        rt = copy.copy(p.rt)
        rt.train_blocks = p.rt.validation_blocks
        rt.manifest = p.manifest.model_copy(update={"inner": p.manifest.inner.model_copy(
            update={"steps": p.manifest.inner.steps * STEPS_FACTOR})})
        try:
            sub = train_submission(rt, p.state, p.me, cycle.number, p.stop.is_set)
        except Interrupted:
            return None
        state = within_norm(sub.state, p.state, NORM_MARGIN * p.manifest.max_delta_norm)
        state = {k: v.to(torch.float32) for k, v in state.items()}
        return Submission(state, encode_state(p.rt, p.state, state), sub.losses)
