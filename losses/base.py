"""The outer-loss interface: one registered ``nn.Module`` per term, the one way to add a term.

A term has a ``weight`` and a short ``key``; the algorithm adds ``weight * value`` to ``loss``
and reports it as ``loss_<key>``, the unweighted value under ``metric`` when the term names
one, and whatever else the term reports. A term works in up to two places:

- :meth:`OuterLoss.per_task` runs once per task inside the task mapper (under ``vmap`` or in
  the per-task loop) with the task's :class:`~engine.adapted_task.AdaptedTask`; there it can ask
  the engine for more than the inner loop computed — the straight-step logits
  (``task.straight_logits()``), the logits at any point over A (``task.logits_at(θ)``), another
  trajectory from θ⁰ on the same support set (``task.retrace(steps=…, lr_scale=…, graph=…)``).
  It returns a dict of per-task tensors; nothing is computed for a term that does not ask.
- :meth:`OuterLoss.value` runs once on the meta-batch with :class:`OuterInputs`: the query
  logits at θˢ, the labels, the stacked :class:`~engine.inner_loop.Trajectory` and, under
  ``extras``, the stacked outputs of this term's own ``per_task``. It returns the term's
  unweighted value, a 0-dim tensor (reported under ``metric`` when the term names one).
- :meth:`OuterLoss.report`, optional, returns more metrics of the same inputs (a dict of 0-dim
  tensors, no graph needed), e.g. LIL pretraining's teacher accuracy.

:meth:`OuterLoss.begin_step` is the once-per-training-step call (a teacher's EMA update).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lil_meta.engine.adapted_task import AdaptedTask
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.inner_loop import Trajectory


def positive_int(term: str, key: str, value) -> int:
    """``value`` as an ``int`` when it is a whole number ≥ 1; otherwise one ConfigError naming
    the term's key and what it got."""
    if int(value) != value or value < 1:
        raise ConfigError(f"losses: {term}'s {key} must be a positive integer, got {value!r}")
    return int(value)


@dataclass
class OuterInputs:
    """What the inner loop produced for the B tasks of a meta-batch (Q query examples, N ways).

    ``logits``: f(xq|θˢ) ``[B, Q, N]``; ``query_y``: ``[B, Q]``; ``trajectory``: the
    :class:`~engine.inner_loop.Trajectory` with a leading task dim (``trajectory.length`` is
    T = Σₖ dₖ, ``[B]``, differentiable where the inner loop is); ``extras``: what this term's
    :meth:`OuterLoss.per_task` returned, stacked over tasks.
    """

    logits: torch.Tensor
    query_y: torch.Tensor
    trajectory: Trajectory
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class OuterLoss(nn.Module):
    """Base class of outer-loss terms: subclasses set ``key``/``metric`` and implement ``value``
    (and ``per_task`` when they need more than the inner loop's outputs; module doc)."""

    key: str = ""
    metric: str | None = None

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def begin_step(self, step: int) -> None:
        """Once per training step, before its forward passes (default: nothing)."""

    def steps_walked(self, inner_steps: int) -> int:
        """The most inner steps any trajectory this term retraces walks when the task's own
        takes ``inner_steps`` (default: none beyond the task's own). Step-dependent parameters
        (per-step rates, per-step BatchNorm rows) are checked against it when the algorithm
        is built."""
        return inner_steps

    def per_task(self, task: AdaptedTask) -> dict[str, torch.Tensor]:
        """Per-task tensors this term needs, computed inside the task mapper (default: none)."""
        return {}

    def value(self, inputs: OuterInputs) -> torch.Tensor:
        """The term's unweighted value over the meta-batch, a 0-dim tensor."""
        raise NotImplementedError

    def report(self, inputs: OuterInputs) -> dict[str, torch.Tensor]:
        """Metrics to log beside the value, each a 0-dim tensor (default: none)."""
        return {}

    def forward(self, inputs: OuterInputs) -> torch.Tensor:
        return self.value(inputs)

    @property
    def asks_per_task(self) -> bool:
        """Whether :meth:`per_task` is overridden (the task mapper calls only those)."""
        return type(self).per_task is not OuterLoss.per_task

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p ‖ q) = Σ p (log p − log q)`` over the last dim, mean over the query examples:
    per task ``[B]`` from log-probabilities (never the log of a softmax)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)


def task_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The query accuracy of each task ``[B]`` (a fraction), without graph."""
    return (logits.argmax(-1) == labels).float().mean(1).detach()
