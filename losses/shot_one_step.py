"""SHOT's one-step form (the published code's ``--SHOT`` switch; docs/design.md §1.1b).

Per task, θ₁ = θ⁰ + S·Δ⁰: one step of S times the first inner step (θ⁰ − S·α·g⁰ for a scalar
rate), with graph. The value is KL(P_S ‖ P_1) with P_S = s(f(xq|θˢ)) detached and
P_1 = s(f(xq|θ₁)): the one long step is pulled toward where the S steps landed. Mean over the
query examples, then over tasks; 0 when S = 0 (Δ⁰ = 0).
"""

from __future__ import annotations

import torch

from lil_meta.engine.adapted_task import AdaptedTask
from lil_meta.engine.registry import LOSSES
from lil_meta.losses.base import OuterInputs, OuterLoss, kl_divergence


@LOSSES.register("shot_one_step")
class SHOTOneStepLoss(OuterLoss):
    """KL from the adapted predictions (detached) to those after one step of S·Δ⁰."""

    key = "shot_one_step"
    metric = "shot_one_step_kl"

    def __init__(self, weight: float = 0.1):
        super().__init__(weight)

    def per_task(self, task: AdaptedTask) -> dict[str, torch.Tensor]:
        first = task.adaptation.first_step
        point = {name: p + task.steps * first[name] for name, p in task.theta0.items()}
        return {"one_step_logits": task.logits_at(point)}

    def value(self, inputs: OuterInputs) -> torch.Tensor:
        target = torch.log_softmax(inputs.logits.detach(), dim=-1)
        return kl_divergence(target, torch.log_softmax(inputs.extras["one_step_logits"], dim=-1)).mean()
