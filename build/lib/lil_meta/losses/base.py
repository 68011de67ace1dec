"""The outer-loss interface: each term maps the meta-batch's adapted outputs to a scalar.

A term is a registered ``nn.Module`` with a ``weight`` and a short ``key``; the algorithm adds
``weight * term(outputs)`` to ``loss`` and reports it as ``loss_<key>``, plus the term's
unweighted value under ``metric`` when it names one. Terms that need the straight-step logits
f(xq|θ̂) set ``needs_straight_step`` so the engine computes them only when asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OuterInputs:
    """What the inner loop produced for the B tasks of a meta-batch (Q query examples, N ways).

    ``logits``: f(xq|θˢ) ``[B, Q, N]``; ``query_y``: ``[B, Q]``; ``traj_len``: T = Σₖ dₖ ``[B]``
    (differentiable where the inner loop is); ``straight_logits``: f(xq|θ̂) with
    θ̂ = θ⁰ + T·Δ⁰/‖Δ⁰‖ (Δ⁰ the first inner step) ``[B, Q, N]``, present when a term asked for it; ``disp_norm``:
    ‖θˢ − θ⁰‖ over the adapted tensors ``[B]`` (differentiable; absent when S = 0).
    """

    logits: torch.Tensor
    query_y: torch.Tensor
    traj_len: torch.Tensor
    straight_logits: torch.Tensor | None = None
    disp_norm: torch.Tensor | None = None


class OuterLoss(nn.Module):
    """Base class of outer-loss terms: subclasses set ``key``/``metric`` and implement ``value``."""

    key: str = ""
    metric: str | None = None
    needs_straight_step: bool = False

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def value(self, inputs: OuterInputs) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inputs: OuterInputs) -> torch.Tensor:
        return self.value(inputs)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
