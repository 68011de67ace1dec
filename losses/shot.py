"""SHOT's term (Lee, Yoo and Kwak, NeurIPS 2023; docs/design.md §1.1b): the adapted predictions
pulled toward those of a finer reference trajectory, a detached target.

Per task, a reference trajectory from θ⁰ on the same support set takes m·S steps at every rate
divided by m (m = ``ref_scale``), with the algorithm's own update rule (so per-tensor,
per-element and learned rates, and a user's rule, are rescaled alike) and without gradient. The
value is KL(P_ref ‖ P_S), P_ref = s(f(xq|θ_ref)) constant, P_S = s(f(xq|θˢ)) carrying the inner
loop's gradient; mean over the query examples, then over tasks. With S = 0, or m = 1, the two
points coincide and the value is 0.
"""

from __future__ import annotations

import torch

from lil_meta.engine.adapted_task import AdaptedTask
from lil_meta.engine.registry import LOSSES
from lil_meta.losses.base import OuterInputs, OuterLoss, kl_divergence, positive_int


@LOSSES.register("shot")
class SHOTLoss(OuterLoss):
    """KL from a reference trajectory of ``ref_scale`` times the steps at 1/``ref_scale`` the rate."""

    key = "shot"
    metric = "shot_kl"

    def __init__(self, weight: float = 0.1, ref_scale: int = 2):
        super().__init__(weight)
        self.ref_scale = positive_int("shot", "ref_scale", ref_scale)

    def steps_walked(self, inner_steps: int) -> int:
        return self.ref_scale * inner_steps

    def per_task(self, task: AdaptedTask) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            ref = task.retrace(steps=self.ref_scale * task.steps, lr_scale=1.0 / self.ref_scale, graph=False)
            return {"ref_logits": task.logits_at(ref.params)}

    def value(self, inputs: OuterInputs) -> torch.Tensor:
        target = torch.log_softmax(inputs.extras["ref_logits"], dim=-1)
        return kl_divergence(target, torch.log_softmax(inputs.logits, dim=-1)).mean()

    def extra_repr(self) -> str:
        return f"weight={self.weight}, ref_scale={self.ref_scale}"
