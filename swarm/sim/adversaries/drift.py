"""general-harm: lowers the math loss while raising the general one, which Proof-of-Loss alone does not measure.

Trained with the honest inner loop (same batches, steps and schedule) on L_math - HARM_WEIGHT x L_general,
its update gains on math like an honest one and, merged, would cost the model general ability. Validators
measure each gaining update's general drift (data.max_general_drift): over 6 cycles of the embedded default
(scripts/general_harm_study.py, teft/assets/studies/general_harm.md) its updates drifted 0.098-0.238 nats on
16 general blocks where they gained, honest ones at most 0.064, and the limit of 0.08 zeroed 9 of 9 of its
gaining judgements and 0 of 354 honest ones. Its raw delta norm (~6.8) is under the bound, so it is sent as
trained (scaled down only past NORM_MARGIN x max_delta_norm).
"""

from __future__ import annotations

import torch

from swarm.protocol.cyclelog import Cycle
from swarm.protocol.runtime import Runtime
from swarm.roles.miner import Miner, Submission, encode_state
from swarm.sim.adversaries.overfit import within_norm
from teft.data import iterate_batches
from teft.state import ExpertState, load_state
from teft.train import Interrupted, lm_loss, lr_at, trainable_experts

HARM_WEIGHT = 0.5  # the general loss enters the objective with this negative weight
NORM_MARGIN = 0.95  # of max_delta_norm: an update past it is scaled down to it, like val-overfit's


def harm_state(rt: Runtime, base: ExpertState, miner_id: str, cycle: int, general: torch.Tensor,
               weight: float = HARM_WEIGHT, should_stop=None) -> ExpertState:
    """The honest inner loop (same batches, steps and schedule as train_submission) on the objective
    L_math - weight x L_general, with general batches drawn from `general`; the model is restored afterwards."""
    cfg = rt.inner_for(cycle)
    size = rt.manifest.inner.batch_size
    torch.manual_seed(cfg.seed)
    math_batches = iterate_batches(rt.train_blocks, size, f"{miner_id}/{cycle}", cfg.steps)
    general_batches = iterate_batches(general, size, f"{miner_id}/{cycle}/general", cfg.steps)
    load_state(rt.model, rt.layout, base)
    was_training = rt.model.training
    try:
        with trainable_experts(rt.model, rt.layout, rt.expert_map, init=base) as params:
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                          foreach=False)
            rt.model.train()
            for step, (target, other) in enumerate(zip(math_batches, general_batches, strict=True)):
                if should_stop is not None and should_stop():
                    raise Interrupted(f"stopped after {step} of {cfg.steps} steps")
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(cfg.step_offset + step, cfg)
                loss = lm_loss(rt.model, target) - weight * lm_loss(rt.model, other)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
            return params.state()
    finally:
        rt.model.train(was_training)
        load_state(rt.model, rt.layout, base)


class GeneralHarm(Miner):
    """Trains on math against the runtime's general data (its public general validation split) and sends the
    update within NORM_MARGIN x the bound."""

    def submission(self, cycle: Cycle) -> Submission | None:
        p = self.peer
        if p.rt.general_blocks is None:  # a run without general data: nothing to aim at, honest work instead
            return super().submission(cycle)
        try:
            trained = harm_state(p.rt, p.state, p.me, cycle.number, p.rt.general_blocks, should_stop=p.stop.is_set)
        except Interrupted:
            return None
        state = within_norm(trained, p.state, NORM_MARGIN * p.manifest.max_delta_norm)
        state = {k: v.to(torch.float32) for k, v in state.items()}
        return Submission(state, encode_state(p.rt, p.state, state))
