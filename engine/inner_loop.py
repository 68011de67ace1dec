"""The functional inner loop (docs/design.md §1) and the mapping of one task's work over a meta-batch.

Parameters are plain ``{name: tensor}`` dicts evaluated with ``torch.func.functional_call``, so
the same per-task function runs either under ``torch.func.vmap`` (all tasks at once) or in a
Python loop over tasks (the reference path, and often the faster one on CPU).

Second-order MAML differentiates through every inner gradient ``gᵏ``: ``torch.func.grad``
returns tensors that stay connected to θ⁰ in the outer autograd graph. First-order variants
detach every ``gᵏ``, so ``∂θˢ/∂θ⁰ = I``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map
from torch.utils.checkpoint import checkpoint

from lil_meta.engine.kernels import group_norms
from lil_meta.engine.vmap_context import (  # tasks_vmapped re-exported
    tasks_under_vmap,
    tasks_vmapped,
)

Params = dict[str, torch.Tensor]
UpdateRule = Callable[[Params, Params, int], Params]

ENGINES = ("vmap", "loop")


def logits_at(model: nn.Module, adapted: Mapping[str, torch.Tensor], frozen: Mapping[str, torch.Tensor], x):
    """``f(x | θ)`` with θ assembled from the adapted and the held-fixed tensors.

    On channels-last images (``algorithm.channels_last``) the convolutions hand back their
    weight gradients channels-last too; they are made contiguous before they reach the rest of
    the graph (left channels-last, they slow the second-order inner loop's double backward by
    more than the channels-last query pass saves; docs/performance.md).
    """
    params = {**frozen, **adapted}
    if x.dim() == 4 and not tasks_vmapped() and not x.is_contiguous() \
            and x.is_contiguous(memory_format=torch.channels_last):
        params = {n: _ContiguousGrad.apply(t) if t.dim() == 4 and t.requires_grad else t for n, t in params.items()}
    return functional_call(model, params, (x,))


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward returns the gradient in the default (contiguous) layout."""

    @staticmethod
    def forward(t):
        return t.view_as(t)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_t):
        return grad_t.contiguous()




def _flat(dicts: Sequence[Params]) -> list[torch.Tensor]:
    return [t for d in dicts for t in d.values()]


def adapt(
    model: nn.Module,
    adapted: Params,
    frozen: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    steps: int,
    update: UpdateRule,
    first_order: bool,
    final_grad: bool = False,
    inner_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    checkpoint_steps: bool = False,
    hessian_ratios: bool = False,
) -> tuple[Params, dict[str, Any]]:
    """Run ``steps`` inner steps ``θᵏ⁺¹ = update(θᵏ, gᵏ, k)`` on one task.

    ``gᵏ`` is the gradient of ``inner_loss(f(xs|θᵏ), ys)`` (cross-entropy by default) with
    respect to the adapted tensors.

    Returns θˢ and the trajectory record: ``step_norms`` ``[S]`` (dₖ = ‖θᵏ⁺¹ − θᵏ‖),
    ``disp_norm`` (‖θˢ − θ⁰‖), ``grad_norms`` (‖gᵏ‖ for k = 0..S-1, and k = S when
    ``final_grad``: one extra support gradient at θˢ, taken without graph, for AC) and ``d0``,
    the first step Δ⁰ = θ¹ − θ⁰ (the direction of the straight step θ̂, ``docs/design.md``),
    and, when ``hessian_ratios``, ``hess_ratios`` ``[S]`` (:func:`_hessian_ratios`, no graph).
    The norms come from one fused call each (:func:`engine.kernels.group_norms`) over the
    parameter copies the loop holds anyway; they are differentiable where the loop is.

    ``checkpoint_steps``: keep no graph of the second-order inner gradients in the forward pass
    and recompute each step's in the backward pass (:func:`_recomputed_in_backward`): less
    memory, one more support forward and backward per step. Per-task loop only.
    """
    support_grad = grad(lambda a, f, x, y: inner_loss(logits_at(model, a, f, x), y))
    constant_grad = _constant_grad(support_grad, model, inner_loss)
    if first_order or not torch.is_grad_enabled():
        step_grad = constant_grad
    elif checkpoint_steps:
        step_grad = _recomputed_in_backward(support_grad)
    elif tasks_vmapped():
        step_grad = support_grad
    else:
        step_grad = _graphed_grad(support_grad, model, inner_loss)
    thetas, grads = [adapted], []
    for step in range(steps):
        g = step_grad(thetas[-1], frozen, support_x, support_y)
        grads.append(g)
        thetas.append(update(thetas[-1], g, step))
    record: dict[str, Any] = {}
    if steps:
        if final_grad:
            grads.append(constant_grad(thetas[-1], frozen, support_x, support_y))
        norms = group_norms(_flat(thetas[1:] + thetas[-1:]), _flat(thetas[:-1] + thetas[:1]), steps + 1)
        record = {
            "step_norms": norms[:steps],
            "disp_norm": norms[steps],
            "grad_norms": group_norms(_flat(grads), [], len(grads)),
            "d0": {name: thetas[1][name] - t for name, t in thetas[0].items()},
        }
        if hessian_ratios:
            record["hess_ratios"] = _hessian_ratios(model, inner_loss, thetas, grads, frozen, support_x, support_y)
    return thetas[-1], record


def straight_step(theta0: Params, d0: Params, length: torch.Tensor, first_norm: torch.Tensor) -> Params:
    """θ̂ = θ⁰ + T · Δ⁰/‖Δ⁰‖: one straight step of length T along the first inner step
    Δ⁰ = θ¹ − θ⁰ (``first_norm`` = ‖Δ⁰‖, paper eq. 7–8). A loop whose steps keep Δ⁰'s direction
    lands exactly on θ̂, whatever its rates or update rule; for the plain update with one
    scalar rate this is θ⁰ − T · g⁰/‖g⁰‖."""
    scale = length / first_norm.clamp_min(1e-12)
    return {name: p + scale * d0[name] for name, p in theta0.items()}


def _hessian_ratios(model: nn.Module, inner_loss, thetas: list[Params], grads: list[Params], frozen: Params,
                    support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
    """hₖ = ½·Δₖᵀ H(θᵏ) Δₖ / (−gᵏᵀ Δₖ) for k = 0..S-1, ``[S]``, without graph (paper eq. 5).

    Δₖ = θᵏ⁺¹ − θᵏ, gᵏ the support gradient at θᵏ and H(θᵏ) the Hessian of the support loss
    with respect to the adapted tensors. The second-order model of the support loss along the
    step is L(θᵏ + Δₖ) ≈ L(θᵏ) + gᵏᵀΔₖ + ½ΔₖᵀHΔₖ: hₖ is the share of the first-order decrease
    that the curvature term takes back (for a scalar rate α, α·gᵏᵀHgᵏ / (2‖gᵏ‖²)); hₖ ≥ 1
    predicts a step that no longer lowers the support loss. One Hessian-vector product per
    step, never the Hessian itself.
    """
    fixed = {name: t.detach() for name, t in frozen.items()}
    x = support_x.detach()
    if tasks_vmapped():  # vmap refuses the channels-last double backward of a convolution
        x = x.contiguous()
    ratios = []
    for k in range(len(thetas) - 1):
        theta = {name: t.detach() for name, t in thetas[k].items()}
        delta = {name: (thetas[k + 1][name] - t).detach() for name, t in thetas[k].items()}
        hvp = _hessian_vector_product(model, inner_loss, theta, delta, fixed, x, support_y)
        curvature = sum((delta[n] * hvp[n]).sum() for n in theta)
        descent = -sum((grads[k][n].detach() * delta[n]).sum() for n in theta)
        ratios.append(0.5 * curvature / descent)
    return torch.stack(ratios)


def _hessian_vector_product(model: nn.Module, inner_loss, theta: Params, vector: Params, frozen: Params,
                            support_x: torch.Tensor, support_y: torch.Tensor) -> Params:
    """H(θ)·v for the support loss, by differentiating gᵀv once more (reverse over reverse;
    H is symmetric). Under vmap through ``torch.func``, otherwise plain autograd on leaves."""

    def loss_at(a: Params) -> torch.Tensor:
        return inner_loss(logits_at(model, a, frozen, support_x), support_y)

    if tasks_vmapped():
        _, hvp_fn = torch.func.vjp(grad(loss_at), theta)
        return hvp_fn(vector)[0]
    leaves = {name: t.requires_grad_() for name, t in theta.items()}
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_at(leaves), list(leaves.values()), create_graph=True,
                                    allow_unused=True, materialize_grads=True)
        dot = sum((g * vector[n]).sum() for g, n in zip(grads, leaves, strict=True))
        if not dot.requires_grad:  # the gradient does not depend on θ: a zero Hessian
            return {name: torch.zeros_like(t) for name, t in theta.items()}
        hvp = torch.autograd.grad(dot, list(leaves.values()), allow_unused=True, materialize_grads=True)
    return dict(zip(leaves, hvp, strict=True))


def _graphed_grad(support_grad: Callable[..., Params], model: nn.Module, inner_loss) -> Callable[..., Params]:
    """The support gradient with its graph, for second order, by plain
    ``torch.autograd.grad(create_graph=True)`` (the per-task loop); ``support_grad`` where an
    adapted tensor has no gradient to take (``requires_grad=False``)."""

    def call(adapted: Params, frozen: Params, support_x: torch.Tensor, support_y: torch.Tensor) -> Params:
        if not all(t.requires_grad for t in adapted.values()):
            return support_grad(adapted, frozen, support_x, support_y)
        loss = inner_loss(logits_at(model, adapted, frozen, support_x), support_y)
        grads = torch.autograd.grad(loss, list(adapted.values()), create_graph=True, allow_unused=True,
                                    materialize_grads=True)
        return dict(zip(adapted, grads, strict=True))

    return call


def _constant_grad(support_grad: Callable[..., Params], model: nn.Module, inner_loss) -> Callable[..., Params]:
    """The support gradient as a constant to the outer loss (first-order steps, evaluation, the
    extra gradient for AC). Outside vmap it is plain ``torch.autograd.grad`` on detached
    copies, whose backward runs with grad mode off and so takes the fused kernels (e.g.
    BatchNorm's); under vmap, ``support_grad`` with no outer graph."""

    def call(adapted: Params, frozen: Params, support_x: torch.Tensor, support_y: torch.Tensor) -> Params:
        if tasks_vmapped():
            with torch.no_grad():
                return support_grad(adapted, frozen, support_x, support_y)
        leaves = {name: t.detach().requires_grad_() for name, t in adapted.items()}
        with torch.enable_grad():
            loss = inner_loss(logits_at(model, leaves, {n: t.detach() for n, t in frozen.items()},
                                        support_x.detach()), support_y)
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True, materialize_grads=True)
        return dict(zip(leaves, grads, strict=True))

    return call


def _recomputed_in_backward(support_grad: Callable[..., Params]) -> Callable[..., Params]:
    """``support_grad`` under activation checkpointing: the forward pass keeps only its inputs,
    the backward pass recomputes the step's graph (with its double-backward part) and
    differentiates it. The reentrant form of :func:`torch.utils.checkpoint.checkpoint` is the
    one that runs ``torch.func.grad`` (the other form's saved-tensor hooks are refused by it);
    it differentiates with respect to its explicit tensor inputs, so every tensor the step
    reads is one: the held-fixed tensors (BOIL's head gets its outer gradient through the
    inner loop) and the support inputs (ANIL's are features, differentiable in the body)."""

    def call(adapted: Params, frozen: Params, support_x: torch.Tensor, support_y: torch.Tensor) -> Params:
        names, fixed = list(adapted), list(frozen)

        def flat_grad(x, *tensors):
            g = support_grad(dict(zip(names, tensors[:len(names)], strict=True)),
                             dict(zip(fixed, tensors[len(names):], strict=True)), x, support_y)
            return tuple(g[n] for n in names)

        out = checkpoint(flat_grad, support_x, *adapted.values(), *frozen.values(), use_reentrant=True)
        return dict(zip(names, out, strict=True))

    return call


def map_tasks(fn: Callable[..., Any], shared: Sequence[Any], per_task: Sequence[torch.Tensor], engine: str):
    """Apply ``fn(*shared, *task_slices)`` to every task; stack the outputs along dim 0.

    ``engine="vmap"`` batches with ``torch.func.vmap``; ``"loop"`` calls ``fn`` once per task.
    Both return the same pytree of stacked tensors.
    """
    if engine == "vmap":
        in_dims = (None,) * len(shared) + (0,) * len(per_task)
        with tasks_under_vmap():
            return vmap(fn, in_dims=in_dims, randomness="different")(*shared, *per_task)
    if engine != "loop":
        raise ValueError(f"algorithm.engine: expected one of {ENGINES} or 'auto', got '{engine}'")
    outputs = [fn(*shared, *(t[i] for t in per_task)) for i in range(per_task[0].shape[0])]
    return tree_map(lambda *leaves: torch.stack(leaves), *outputs)
