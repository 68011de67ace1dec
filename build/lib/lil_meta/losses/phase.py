"""LIL's phase loss (paper eq. 7–8)."""

import torch

from lil_meta.engine.registry import LOSSES
from lil_meta.losses.base import OuterInputs, OuterLoss


def phase_kl(logits: torch.Tensor, straight_logits: torch.Tensor) -> torch.Tensor:
    """``KL(s(f(xq|θˢ)) ‖ s(f(xq|θ̂)))`` per task ``[B]``: ``Σ P (log P − log Q̂)``, mean over query.

    Both distributions come from ``log_softmax`` (never the log of a softmax).
    """
    log_p = torch.log_softmax(logits, dim=-1)
    log_q = torch.log_softmax(straight_logits, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)


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
    needs_straight_step = True

    def value(self, inputs: OuterInputs) -> torch.Tensor:
        if inputs.straight_logits is None:
            raise ValueError("phase loss: the engine did not compute the straight-step logits")
        return phase_kl(inputs.logits, inputs.straight_logits).mean()
