"""The one naive reference the gradient tests measure the framework against.

Written the plain way, independent of ``engine.inner_loop``: one task at a time, the adapted
parameters as one flat vector θ, the inner rates α as explicit numbers or a vector of the same
layout, every gradient from ``torch.autograd.grad``, and the LIL terms from explicit
probabilities (docs/design.md §1):

- inner steps θᵏ⁺¹ = θᵏ − α ⊙ gᵏ, gᵏ = ∇ CE(f(support | θᵏ)), for S steps;
- ``order``: ``"second"`` keeps every gᵏ in the graph (MAML), ``"first"`` detaches them
  (FOMAML: ∂θˢ/∂θ⁰ = I), ``"none"`` builds no graph at all (a fixed trajectory);
- trajectory length T = Σₖ ‖θᵏ⁺¹ − θᵏ‖ (the pseudo-amplitude term);
- straight step along the first step Δ⁰ = θ¹ − θ⁰: θ̂ = θ⁰ + T · Δ⁰/‖Δ⁰‖ (for a scalar rate,
  θ⁰ − T · g⁰/‖g⁰‖);
- phase term KL(P ‖ P̂) on the query set, P = softmax f(query | θˢ), P̂ = softmax f(query | θ̂);
- linearity metrics PC = T / ‖θˢ − θ⁰‖ and AC = mean over k = 1..S of ‖gᵏ‖ / ‖g⁰‖.

Parameters that are not adapted (``adapted``) stay the model's own tensors, so the outer
gradient reaches them through the forward passes only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

ORDERS = ("second", "first", "none")


class Flat:
    """The adapted parameters of ``model`` as one vector, and the rates α in the same layout.

    Args:
        model: the network; evaluated with ``torch.func.functional_call``.
        rates: a number (one rate for every element), or ``{name: rate}`` with a number or a
            tensor per adapted parameter (per-tensor or per-element rates; a learnable rate
            keeps its graph, so the outer gradient reaches it).
        adapted: the names of the adapted parameters (default: all of them).
    """

    def __init__(self, model: nn.Module, rates: float | Mapping[str, float | torch.Tensor] = 0.0,
                 adapted: Iterable[str] | None = None) -> None:
        params = dict(model.named_parameters())
        self.model = model
        chosen = set(params if adapted is None else adapted)
        self.names = [n for n in params if n in chosen]
        self.frozen = {n: p for n, p in params.items() if n not in self.names}
        self.shapes = [params[n].shape for n in self.names]
        self.sizes = [params[n].numel() for n in self.names]
        self.theta0 = torch.cat([params[n].flatten() for n in self.names])
        if isinstance(rates, Mapping):
            dtype = self.theta0.dtype
            self.rates = torch.cat([torch.as_tensor(rates[n], dtype=dtype).expand(s).flatten()
                                    for n, s in zip(self.names, self.shapes, strict=True)])
        else:
            self.rates = rates

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, vec.split(self.sizes), self.shapes, strict=True)}

    def logits(self, vec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """f(x | θ) with the adapted parameters taken from ``vec``."""
        return torch.func.functional_call(self.model, {**self.frozen, **self.unflatten(vec)}, (x,))

    def loss(self, vec: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(vec, x), y)

    def trajectory(self, x: torch.Tensor, y: torch.Tensor, steps: int, order: str = "second",
                   start: torch.Tensor | None = None, final_grad: bool = False):
        """θ⁰..θˢ and g⁰..gˢ⁻¹ (and gˢ with ``final_grad``) of θᵏ⁺¹ = θᵏ − α ⊙ gᵏ on ``(x, y)``,
        from ``start`` (default: the model's θ⁰)."""
        if order not in ORDERS:
            raise ValueError(f"order: expected one of {ORDERS}, got {order!r}")
        theta = self.theta0 if start is None else start
        if order == "none":
            theta = theta.detach()
        thetas, grads = [theta], []
        for k in range(steps + int(final_grad)):
            if order == "none":
                theta = thetas[-1].detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.loss(theta, x, y), theta)
            else:
                theta = thetas[-1]
                (g,) = torch.autograd.grad(self.loss(theta, x, y), theta, create_graph=order == "second")
                g = g if order == "second" else g.detach()
            grads.append(g)
            if k < steps:
                nxt = thetas[-1] - self.rates * g
                thetas.append(nxt.detach() if order == "none" else nxt)
        return thetas, grads


def path_length(thetas: Sequence[torch.Tensor]) -> torch.Tensor:
    """T = Σₖ ‖θᵏ⁺¹ − θᵏ‖."""
    return torch.stack([(b - a).norm() for a, b in zip(thetas[:-1], thetas[1:], strict=True)]).sum()


def straight_step(thetas: Sequence[torch.Tensor], length: torch.Tensor | None = None) -> torch.Tensor:
    """θ̂ = θ⁰ + T · Δ⁰/‖Δ⁰‖ with Δ⁰ = θ¹ − θ⁰ and T = ``length`` (default: the trajectory's own)."""
    delta0 = thetas[1] - thetas[0]
    return thetas[0] + (path_length(thetas) if length is None else length) * delta0 / delta0.norm()


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) from explicit softmax probabilities, averaged over the rows."""
    p, q = torch.softmax(p_logits, -1), torch.softmax(q_logits, -1)
    return (p * (p.log() - q.log())).sum(-1).mean()


def meta_objective(model: nn.Module, batch, *, steps: int,
                   rates: float | Mapping[str, float | torch.Tensor],
                   adapted: Iterable[str] | None = None, order: str = "second",
                   phase_weight: float = 0.0, amplitude_weight: float = 0.0,
                   metrics: bool = False) -> dict[str, torch.Tensor]:
    """The outer objective over a meta-batch, task by task.

    Returns the means over tasks of ``loss_ce`` (query CE at θˢ); when a LIL weight is set or
    ``metrics`` is asked for, also ``phase_kl`` (KL to the straight step) and ``traj_len`` (T);
    with ``metrics``, ``pc`` and ``ac``. ``loss`` is loss_ce + phase_weight · phase_kl +
    amplitude_weight · traj_len (terms of weight 0 left out), differentiable with respect to the
    model's parameters and any learnable rate (unless ``order="none"``).
    """
    flat = Flat(model, rates, adapted)
    lil = bool(phase_weight or amplitude_weight or metrics)
    terms: dict[str, list[torch.Tensor]] = {"loss_ce": []}
    if lil:
        terms.update(phase_kl=[], traj_len=[])
    if metrics:
        terms.update(pc=[], ac=[])
    for i in range(batch.num_tasks):
        thetas, grads = flat.trajectory(batch.support_x[i], batch.support_y[i], steps, order,
                                        final_grad=metrics)
        query = flat.logits(thetas[-1], batch.query_x[i])
        terms["loss_ce"].append(F.cross_entropy(query, batch.query_y[i]))
        if lil:
            length = path_length(thetas)
            straight = flat.logits(straight_step(thetas, length), batch.query_x[i])
            terms["phase_kl"].append(kl(query, straight))
            terms["traj_len"].append(length)
        if metrics:
            terms["pc"].append(length / (thetas[-1] - thetas[0]).norm())
            terms["ac"].append(torch.stack([g.norm() / grads[0].norm() for g in grads[1:]]).mean())
    out = {key: torch.stack(values).mean() for key, values in terms.items()}
    loss = out["loss_ce"]
    if phase_weight:
        loss = loss + phase_weight * out["phase_kl"]
    if amplitude_weight:
        loss = loss + amplitude_weight * out["traj_len"]
    out["loss"] = loss
    return out


def meta_gradient(model: nn.Module, batch, *, steps: int, lr: float, first_order: bool = False):
    """Plain MAML (or FOMAML): the outer loss (detached) and its gradient for every parameter."""
    loss = meta_objective(model, batch, steps=steps, rates=lr,
                          order="first" if first_order else "second")["loss"]
    return loss.detach(), torch.autograd.grad(loss, list(model.parameters()))
