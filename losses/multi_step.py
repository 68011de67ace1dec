"""MAML++'s multi-step loss (Antoniou, Edwards and Storkey, ICLR 2019; docs/design.md §1.1c): the
query loss after every inner step, weighted by an importance vector that anneals towards the
last step.

L = Σₖ₌₁..S vₖ(t) · CE(f(xq|θᵏ), yq) at training iteration t, with A = ``anneal_iters``:
vₖ(0) = 1/S; each non-final weight falls by (1/S)/A per iteration to a floor of 0.03/S, the
final one is min(1/S + t(S−1)/(S·A), 1 − (S−1)·0.03/S); from t = A on the final step's loss
alone (weight 1), as in the MAML++ code. The query logits at every θᵏ come from the points the
inner loop walked (:meth:`engine.adapted_task.AdaptedTask.step_logits`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lil_meta.engine.adapted_task import AdaptedTask
from lil_meta.engine.registry import LOSSES
from lil_meta.losses.base import OuterInputs, OuterLoss, positive_int


def importance(steps: int, iteration: int, anneal_iters: int) -> torch.Tensor:
    """MAML++'s importance vector v(t) over the S steps, fp64 ``[S]`` (module doc)."""
    if iteration >= anneal_iters:
        return torch.eye(steps, dtype=torch.float64)[-1]
    floor, decay = 0.03 / steps, 1.0 / steps / anneal_iters
    weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    weights[:-1] = (weights[:-1] - iteration * decay).clamp_min(floor)
    weights[-1] = min(1.0 / steps + iteration * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return weights


@LOSSES.register("multi_step_ce")
class MultiStepCE(OuterLoss):
    """Σₖ vₖ(t) · CE at θᵏ (module doc); ``anneal_iters`` defaults to a tenth of ``solver.max_iter``.
    Reports ``msl_final_weight``, v_S(t)."""

    key = "msl"
    metric = "msl_ce"

    def __init__(self, weight: float = 1.0, anneal_iters: int = 1):
        super().__init__(weight)
        self.anneal_iters = positive_int("multi_step_ce", "anneal_iters", anneal_iters)
        self.iteration = 0  # set from the trainer's step index before every step's forward

    def begin_step(self, step: int) -> None:
        self.iteration = int(step)

    def per_task(self, task: AdaptedTask) -> dict[str, torch.Tensor]:
        return {"step_logits": task.step_logits()}

    def value(self, inputs: OuterInputs) -> torch.Tensor:
        logits = inputs.extras["step_logits"]  # [B, S, Q, N]
        steps, labels = logits.shape[1], inputs.query_y[:, None].expand(-1, logits.shape[1], -1)
        per_step = F.cross_entropy(logits.flatten(0, 2), labels.flatten(), reduction="none")
        per_step = per_step.view(logits.shape[0], steps, -1).mean((0, 2))  # [S]: each step's mean over tasks
        weights = importance(steps, self.iteration, self.anneal_iters).to(per_step)
        return (weights * per_step).sum()

    def report(self, inputs: OuterInputs) -> dict[str, torch.Tensor]:
        steps = inputs.extras["step_logits"].shape[1]
        return {"msl_final_weight": importance(steps, self.iteration, self.anneal_iters)[-1].to(inputs.logits.dtype)}
