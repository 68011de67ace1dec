"""Reptile's meta-update as an outer-loss term (Nichol, Achiam and Schulman, 2018; docs/design.md
§1.1c): ½‖θ⁰ − stopgrad θˢ‖² / (α·S) per task, mean over tasks.

Its gradient with respect to θ⁰ is mean(θ⁰ − θˢ)/(α·S), so the ordinary outer optimizer takes the
step: plain SGD at outer rate ε·α·S is Reptile's update θ⁰ ← θ⁰ + ε·mean(θˢ − θ⁰) exactly, and
Adam is the common variant. The division by α·S makes the gradient the average (negative)
inner gradient, of the size a MAML meta-gradient has, so the usual outer rates apply.
"""

from __future__ import annotations

import torch

from lil_meta.engine.adapted_task import AdaptedTask
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import LOSSES
from lil_meta.losses.base import OuterInputs, OuterLoss


@LOSSES.register("reptile")
class ReptileLoss(OuterLoss):
    """½‖θ⁰ − stopgrad θˢ‖² / ``scale`` (the algorithm's α·S) over the adapted tensors; reports
    ``reptile_step``, the mean ‖θˢ − θ⁰‖."""

    key = "reptile"

    def __init__(self, weight: float = 1.0, scale: float = 1.0):
        super().__init__(weight)
        if not scale > 0:
            raise ConfigError(f"losses: reptile's scale (inner_lr x inner_steps) must be > 0, got {scale}")
        self.scale = float(scale)

    def per_task(self, task: AdaptedTask) -> dict[str, torch.Tensor]:
        theta_s = task.adaptation.params
        half_sq = 0.5 * sum((t0 - theta_s[n].detach()).square().sum() for n, t0 in task.theta0.items())
        return {"half_sq": half_sq}

    def value(self, inputs: OuterInputs) -> torch.Tensor:
        return inputs.extras["half_sq"].mean() / self.scale

    def report(self, inputs: OuterInputs) -> dict[str, torch.Tensor]:
        return {"reptile_step": (2 * inputs.extras["half_sq"].detach()).sqrt().mean()}
