"""One task after its inner loop, as an outer-loss term sees it (:mod:`losses.base`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lil_meta.engine.inner_loop import (
    Adaptation,
    InnerLoop,
    Params,
    Trajectory,
    adapt,
    logits_at,
    query_step,
    straight_step,
)

__all__ = ["AdaptedTask"]


@dataclass(kw_only=True)
class AdaptedTask:
    """One task after its inner loop, as an outer-loss term sees it (:mod:`losses.base`).

    ``logits`` f(xq|θˢ), ``theta0`` the adapted tensors at θ⁰, ``adaptation`` what
    :func:`adapt` returned, ``inner`` the :class:`InnerLoop` it ran. The methods compute more on
    request, only for the terms that ask, with the task's own network, support set and inner
    loop: the logits at any point over A (:meth:`logits_at`), at the straight step θ̂
    (:meth:`straight_logits`, computed once however many terms ask) and after another
    trajectory (:meth:`retrace`). Per task: under ``vmap`` every tensor is one task's slice.
    """

    model: nn.Module
    frozen: Params
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    theta0: Params
    adaptation: Adaptation
    logits: torch.Tensor
    inner: InnerLoop
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def vmapped(self) -> bool:
        return self.inner.vmapped

    @property
    def trajectory(self) -> Trajectory:
        return self.adaptation.trajectory

    @property
    def steps(self) -> int:
        """S, the inner steps this task took."""
        return int(self.trajectory.step_norms.shape[-1])

    def logits_at(self, params: Params, frozen: Params | None = None, point: int | None = None) -> torch.Tensor:
        """f(xq|θ) at the adapted tensors ``params`` (the held-fixed ones: the task's, or ``frozen``),
        as the query forward at trajectory point ``point`` (default S: in place of θˢ), which
        matters to a network that takes the inner step (:func:`~engine.inner_loop.query_step`)."""
        step = query_step(self.steps if point is None else point)
        return logits_at(self.model, params, self.frozen if frozen is None else frozen, self.query_x,
                         vmapped=self.inner.vmapped, step=step)

    def straight_point(self, length: torch.Tensor | None = None) -> Params:
        """θ̂ = θ⁰ + T · Δ⁰/‖Δ⁰‖ (eq. 7–8), T the trajectory length unless ``length`` is given."""
        traj = self.trajectory
        if self.steps == 0:
            return self.adaptation.params
        return straight_step(self.theta0, self.adaptation.first_step,
                             traj.length if length is None else length, traj.step_norms[0])

    def step_logits(self) -> torch.Tensor:
        """f(xq|θᵏ) at every point of the trajectory, k = 1 … S, ``[S, Q, N]`` (MAML++'s
        multi-step loss): the loop's own points, no second inner loop; the last is ``logits``."""
        if "steps" not in self._cache:
            path = self.adaptation.path
            points = [self.logits_at(p, point=k) for k, p in enumerate(path[:-1], start=1)]
            self._cache["steps"] = torch.stack(points + [self.logits]) if path \
                else self.logits[None]
        return self._cache["steps"]

    def straight_logits(self) -> torch.Tensor:
        """f(xq|θ̂) at the straight step of the trajectory's own length (LIL's phase term)."""
        if "straight" not in self._cache:
            self._cache["straight"] = self.logits if self.steps == 0 else self.logits_at(self.straight_point())
        return self._cache["straight"]

    def retrace(self, *, steps: int | None = None, lr_scale: float = 1.0, graph: bool = True,
                start: Params | None = None, frozen: Params | None = None,
                first_order: bool | None = None) -> Adaptation:
        """Another trajectory on the same support set with the algorithm's update rule: from θ⁰
        (or ``start``, e.g. a teacher's tensors, with its ``frozen`` ones), ``steps`` steps
        (default S) at every rate times ``lr_scale``. ``graph=False`` builds no graph (a
        constant target); with a graph it is first- or second-order like the task's own loop."""
        update = self.inner.update
        rule = update if lr_scale == 1.0 else (lambda p, g, k: update(p, g, k, lr_scale=lr_scale))
        inner = dataclasses.replace(self.inner, update=rule, checkpoint_steps=self.inner.checkpoint_steps and graph,
                                    first_order=self.inner.first_order if first_order is None else first_order)
        run = lambda: adapt(  # noqa: E731
            self.model, self.theta0 if start is None else start, self.frozen if frozen is None else frozen,
            self.support_x, self.support_y, steps=self.steps if steps is None else steps, inner=inner)
        if graph:
            return run()
        with torch.no_grad():
            return run()
