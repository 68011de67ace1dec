"""LIL's phase loss (paper eq. 7–8)."""

import torch

from lil_meta.engine.adapted_task import AdaptedTask
from lil_meta.engine.registry import LOSSES
from lil_meta.losses.base import OuterInputs, OuterLoss, kl_divergence


def phase_kl(logits: torch.Tensor, straight_logits: torch.Tensor) -> torch.Tensor:
    """``KL(s(f(xq|θˢ)) ‖ s(f(xq|θ̂)))`` per task ``[B]``: ``Σ P (log P − log Q̂)``, mean over query.

    Both distributions come from ``log_softmax`` (never the log of a softmax).
    """
    return kl_divergence(torch.log_softmax(logits, dim=-1), torch.log_softmax(straight_logits, dim=-1))


@LOSSES.register("phase")
class PhaseLoss(OuterLoss):
    """KL between the predictions after S inner steps and after one straight step of equal length.

    θ̂ = θ⁰ + T · Δ⁰/‖Δ⁰‖ with T the trajectory length and Δ⁰ = θ¹ − θ⁰ the first inner step:
    if the inner loop kept its direction (phase), the S steps would land exactly on θ̂. The
    paper writes ∇θ f(x|θ⁰) for the direction; Δ⁰ is the direction the inner loop actually
    starts in, −g⁰'s for one scalar rate, and the only one on which a straight loop with
    per-tensor, per-element or learned rates, or another update rule, lands
    (``docs/design.md``). Mean over query examples, then over tasks.
    """

    key = "phase"
    metric = "phase_kl"

    def per_task(self, task: AdaptedTask) -> dict[str, torch.Tensor]:
        return {"straight_logits": task.straight_logits()}

    def value(self, inputs: OuterInputs) -> torch.Tensor:
        return phase_kl(inputs.logits, inputs.extras["straight_logits"]).mean()
