"""The functional inner loop (docs/design.md §1) and the mapping of one task's work over a meta-batch.

Parameters are plain ``{name: tensor}`` dicts evaluated with ``torch.func.functional_call``, so
the same per-task function runs either under ``torch.func.vmap`` (all tasks at once) or in a
Python loop over tasks (the reference path, and often the faster one on CPU). Which of the two
runs is an explicit argument, ``vmapped``, of every function here that computes differently
under vmap; :func:`map_tasks` passes it to the per-task function.

Second-order MAML differentiates through every inner gradient ``gᵏ``: the gradients stay
connected to θ⁰ in the outer autograd graph. First-order variants detach every ``gᵏ``, so
``∂θˢ/∂θ⁰ = I``.

:func:`adapt` runs the S steps of one task as an :class:`InnerLoop` says (update rule, support
loss, first or second order, checkpointing, vmapped) and returns an :class:`Adaptation` (θˢ, the
first step Δ⁰ and the typed :class:`Trajectory`); :class:`engine.adapted_task.AdaptedTask` is
what the outer-loss terms see of one task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.checkpoint import checkpoint

from lil_meta.engine.kernels import group_norms

Params = dict[str, torch.Tensor]
UpdateRule = Callable[..., Params]  # update(params, grads, step, lr_scale=1.0)
InnerLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ENGINES = ("vmap", "loop")


@dataclass(frozen=True)
class InnerLoop:
    """How a task's inner loop runs, one value for every call of :func:`adapt` of an algorithm.

    ``update(params, grads, step, lr_scale=1.0)``: the step θᵏ⁺¹ from θᵏ and gᵏ (every rate
    times ``lr_scale``: a term's rescaled trajectory); ``loss``: the support objective;
    ``first_order``: detach every gᵏ; ``checkpoint_steps``: recompute each second-order step's
    graph in the backward pass (:func:`_recomputed_in_backward`; per-task loop only);
    ``vmapped``: the call runs under :func:`map_tasks`'s ``vmap`` (module doc).
    """

    update: UpdateRule
    loss: InnerLoss = F.cross_entropy
    first_order: bool = False
    checkpoint_steps: bool = False
    vmapped: bool = False


class Trajectory(NamedTuple):
    """One task's inner trajectory θ⁰ … θˢ over the adapted set A (docs/design.md §1).

    Shapes are per task; after :func:`map_tasks` every field gains a leading task dim ``[B]``.
    Differentiable where the inner loop is (not the diagnostics, which carry no graph).

    Fields:
        step_norms: dₖ = ‖θᵏ⁺¹ − θᵏ‖, k = 0 … S−1, ``[S]``.
        disp_norm: ‖θˢ − θ⁰‖, ``[]``.
        grad_norms: ‖gᵏ‖, k = 0 … S−1, ``[S]``.
        final_grad_norm: ‖gˢ‖, one more support gradient at θˢ (for AC, eq. 4), ``[]``; only
            on logging steps, else ``None``.
        hess_ratios: hₖ = ½ Δₖᵀ H(θᵏ) Δₖ / (−gᵏᵀ Δₖ) of eq. 5, ``[S]``; only on logging steps.
    """

    step_norms: torch.Tensor
    disp_norm: torch.Tensor
    grad_norms: torch.Tensor
    final_grad_norm: torch.Tensor | None = None
    hess_ratios: torch.Tensor | None = None

    @property
    def length(self) -> torch.Tensor:
        """T = Σₖ dₖ, the trajectory length (the pseudo-amplitude, eq. 9), ``[]`` (``[B]``)."""
        return self.step_norms.sum(-1)


class Adaptation(NamedTuple):
    """What :func:`adapt` returns: θˢ (``params``), the first step Δ⁰ = θ¹ − θ⁰ (``first_step``,
    the direction of the straight step θ̂; θ⁰'s zeros when S = 0), the :class:`Trajectory` and
    the points θ¹ … θˢ the loop walked (``path``; the graph holds them anyway)."""

    params: Params
    first_step: Params
    trajectory: Trajectory
    path: tuple[Params, ...] = ()


def takes_step(model: nn.Module) -> bool:
    """Whether the network computes differently at each inner step (MAML++'s per-step
    BatchNorm weights): it then takes the step, ``model(x, step=k)``."""
    return bool(getattr(model, "takes_step", False))


def query_step(point: int) -> int:
    """The network's step for the query forward at θᵏ: ``k − 1`` (the row that served the
    support forward of the step that reached θᵏ), 0 at θ⁰. The support forward at θᵏ is step
    ``k``. Only a network that :func:`takes_step` reads it (MAML++'s BNWB convention)."""
    return max(point - 1, 0)


def network_call(model: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor, step: int | None = None):
    """``functional_call(model, params, x)``, handing ``step`` to a network that takes one."""
    return functional_call(model, params, (x,), {"step": step} if takes_step(model) else None)


def logits_at(model: nn.Module, adapted: Mapping[str, torch.Tensor], frozen: Mapping[str, torch.Tensor], x,
              *, vmapped: bool = False, step: int | None = None):
    """``f(x | θ)`` with θ assembled from the adapted and the held-fixed tensors; ``step``: the
    inner step, for a network that :func:`takes_step` (else unused).

    On channels-last images (``algorithm.execution.channels_last``, per-task loop) the convolutions hand
    back their weight gradients channels-last too; they are made contiguous before they reach
    the rest of the graph (left channels-last, they slow the second-order inner loop's double
    backward by more than the channels-last query pass saves; docs/performance.md).
    """
    params = {**frozen, **adapted}
    if x.dim() == 4 and not vmapped and not x.is_contiguous() \
            and x.is_contiguous(memory_format=torch.channels_last):
        params = {n: _ContiguousGrad.apply(t) if t.dim() == 4 and t.requires_grad else t for n, t in params.items()}
    return network_call(model, params, x, step)


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


def adapt(model: nn.Module, adapted: Params, frozen: Params, support_x: torch.Tensor, support_y: torch.Tensor,
          *, steps: int, inner: InnerLoop, final_grad: bool = False, hessian_ratios: bool = False) -> Adaptation:
    """Run ``steps`` inner steps ``θᵏ⁺¹ = inner.update(θᵏ, gᵏ, k)`` on one task.

    ``gᵏ`` is the gradient of ``inner.loss(f(xs|θᵏ), ys)`` with respect to the adapted tensors,
    kept in the outer graph unless ``inner.first_order`` (or grad mode is off). ``final_grad``:
    one more support gradient at θˢ, without graph, for AC; ``hessian_ratios``: hₖ of eq. 5
    (:func:`_hessian_ratios`, no graph). The norms come from one fused call each
    (:func:`engine.kernels.group_norms`) over the parameter copies the loop holds anyway.
    A network that :func:`takes_step` is handed step ``k`` for the support forward at θᵏ (and
    for gˢ, the query forward's step at θˢ, :func:`query_step`).

    ``inner.checkpoint_steps`` keeps no graph of the second-order inner gradients in the
    forward pass and recomputes each step's in the backward pass (:func:`_recomputed_in_backward`):
    less memory, one more support forward and backward per step.
    """
    update, inner_loss, vmapped = inner.update, inner.loss, inner.vmapped
    support_grad = grad(lambda a, f, x, y, k: inner_loss(logits_at(model, a, f, x, vmapped=vmapped, step=k), y))
    constant_grad = _constant_grad(support_grad, model, inner_loss, vmapped)
    if inner.first_order or not torch.is_grad_enabled():
        step_grad = constant_grad
    elif inner.checkpoint_steps:
        step_grad = _recomputed_in_backward(support_grad)
    elif vmapped:
        step_grad = support_grad
    else:
        step_grad = _graphed_grad(support_grad, model, inner_loss)
    thetas, grads = [adapted], []
    for step in range(steps):
        g = step_grad(thetas[-1], frozen, support_x, support_y, step)
        grads.append(g)
        thetas.append(update(thetas[-1], g, step))
    if not steps:
        none = support_x.new_zeros(0)
        return Adaptation(adapted, {name: torch.zeros_like(t) for name, t in adapted.items()},
                          Trajectory(none, support_x.new_zeros(()), none))
    final = grad_norm = ratios = None
    if final_grad:
        final = constant_grad(thetas[-1], frozen, support_x, support_y, query_step(steps))
    norms = group_norms(_flat(thetas[1:] + thetas[-1:]), _flat(thetas[:-1] + thetas[:1]), steps + 1)
    all_grad_norms = group_norms(_flat(grads + ([final] if final is not None else [])), [],
                                 steps + (final is not None))
    if final is not None:
        grad_norm = all_grad_norms[steps]
    if hessian_ratios:
        ratios = _hessian_ratios(model, inner, thetas, grads, frozen, (support_x, support_y))
    trajectory = Trajectory(norms[:steps], norms[steps], all_grad_norms[:steps], grad_norm, ratios)
    first_step = {name: thetas[1][name] - t for name, t in thetas[0].items()}
    return Adaptation(thetas[-1], first_step, trajectory, tuple(thetas[1:]))


def straight_step(theta0: Params, d0: Params, length: torch.Tensor, first_norm: torch.Tensor) -> Params:
    """θ̂ = θ⁰ + T · Δ⁰/‖Δ⁰‖: one straight step of length T along the first inner step
    Δ⁰ = θ¹ − θ⁰ (``first_norm`` = ‖Δ⁰‖, paper eq. 7–8). A loop whose steps keep Δ⁰'s direction
    lands exactly on θ̂, whatever its rates or update rule; for the plain update with one
    scalar rate this is θ⁰ − T · g⁰/‖g⁰‖."""
    scale = length / first_norm.clamp_min(1e-12)
    return {name: p + scale * d0[name] for name, p in theta0.items()}


def _hessian_ratios(model: nn.Module, inner: InnerLoop, thetas: list[Params], grads: list[Params], frozen: Params,
                    support: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """hₖ = ½·Δₖᵀ H(θᵏ) Δₖ / (−gᵏᵀ Δₖ) for k = 0..S-1, ``[S]``, without graph (paper eq. 5).

    Δₖ = θᵏ⁺¹ − θᵏ, gᵏ the support gradient at θᵏ and H(θᵏ) the Hessian of the support loss
    with respect to the adapted tensors. The second-order model of the support loss along the
    step is L(θᵏ + Δₖ) ≈ L(θᵏ) + gᵏᵀΔₖ + ½ΔₖᵀHΔₖ: hₖ is the share of the first-order decrease
    that the curvature term takes back (for a scalar rate α, α·gᵏᵀHgᵏ / (2‖gᵏ‖²)); hₖ ≥ 1
    predicts a step that no longer lowers the support loss. One Hessian-vector product per
    step, never the Hessian itself.
    """
    fixed = {name: t.detach() for name, t in frozen.items()}
    x, support_y = support[0].detach(), support[1]
    if inner.vmapped:  # vmap refuses the channels-last double backward of a convolution
        x = x.contiguous()
    ratios = []
    for k in range(len(thetas) - 1):
        theta = {name: t.detach() for name, t in thetas[k].items()}
        delta = {name: (thetas[k + 1][name] - t).detach() for name, t in thetas[k].items()}
        hvp = _hessian_vector_product(model, inner, theta, delta, fixed, (x, support_y), step=k)
        curvature = sum((delta[n] * hvp[n]).sum() for n in theta)
        descent = -sum((grads[k][n].detach() * delta[n]).sum() for n in theta)
        ratios.append(0.5 * curvature / descent)
    return torch.stack(ratios)


def _hessian_vector_product(model: nn.Module, inner: InnerLoop, theta: Params, vector: Params, frozen: Params,
                            support: tuple[torch.Tensor, torch.Tensor], *, step: int) -> Params:
    """H(θ)·v for the support loss, by differentiating gᵀv once more (reverse over reverse;
    H is symmetric). Under vmap through ``torch.func``, otherwise plain autograd on leaves."""
    support_x, support_y = support

    def loss_at(a: Params) -> torch.Tensor:
        return inner.loss(logits_at(model, a, frozen, support_x, vmapped=inner.vmapped, step=step), support_y)

    if inner.vmapped:
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

    def call(adapted: Params, frozen: Params, support_x: torch.Tensor, support_y: torch.Tensor, step: int) -> Params:
        if not all(t.requires_grad for t in adapted.values()):
            return support_grad(adapted, frozen, support_x, support_y, step)
        loss = inner_loss(logits_at(model, adapted, frozen, support_x, step=step), support_y)
        grads = torch.autograd.grad(loss, list(adapted.values()), create_graph=True, allow_unused=True,
                                    materialize_grads=True)
        return dict(zip(adapted, grads, strict=True))

    return call


def _constant_grad(support_grad: Callable[..., Params], model: nn.Module, inner_loss,
                   vmapped: bool) -> Callable[..., Params]:
    """The support gradient as a constant to the outer loss (first-order steps, evaluation, the
    extra gradient for AC). Outside vmap it is plain ``torch.autograd.grad`` on detached
    copies, whose backward runs with grad mode off and so takes the fused kernels (e.g.
    BatchNorm's); under vmap, ``support_grad`` with no outer graph."""

    def call(adapted: Params, frozen: Params, support_x: torch.Tensor, support_y: torch.Tensor, step: int) -> Params:
        if vmapped:
            with torch.no_grad():
                return support_grad(adapted, frozen, support_x, support_y, step)
        leaves = {name: t.detach().requires_grad_() for name, t in adapted.items()}
        with torch.enable_grad():
            loss = inner_loss(logits_at(model, leaves, {n: t.detach() for n, t in frozen.items()},
                                        support_x.detach(), step=step), support_y)
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

    def call(adapted: Params, frozen: Params, support_x: torch.Tensor, support_y: torch.Tensor, step: int) -> Params:
        names, fixed = list(adapted), list(frozen)

        def flat_grad(x, *tensors):
            g = support_grad(dict(zip(names, tensors[:len(names)], strict=True)),
                             dict(zip(fixed, tensors[len(names):], strict=True)), x, support_y, step)
            return tuple(g[n] for n in names)

        out = checkpoint(flat_grad, support_x, *adapted.values(), *frozen.values(), use_reentrant=True)
        return dict(zip(names, out, strict=True))

    return call


def map_tasks(fn: Callable[..., Any], shared: Sequence[Any], per_task: Sequence[torch.Tensor], engine: str):
    """Apply ``fn(*shared, *task_slices, vmapped=…)`` to every task; stack the outputs along dim 0.

    ``engine="vmap"`` batches with ``torch.func.vmap`` (``vmapped=True``); ``"loop"`` calls
    ``fn`` once per task (``vmapped=False``). Both return the same pytree of stacked tensors;
    ``None`` leaves (a diagnostic not computed) stay ``None``.
    """
    if engine == "vmap":
        spec = {}

        def tensors_only(*args):
            leaves, spec["tree"] = tree_flatten(fn(*args, vmapped=True))
            spec["none"] = [leaf is None for leaf in leaves]
            return tuple(leaf for leaf in leaves if leaf is not None)

        in_dims = (None,) * len(shared) + (0,) * len(per_task)
        stacked = iter(vmap(tensors_only, in_dims=in_dims, randomness="different")(*shared, *per_task))
        return tree_unflatten([None if none else next(stacked) for none in spec["none"]], spec["tree"])
    if engine != "loop":
        raise ValueError(f"algorithm.execution.engine: expected one of {ENGINES} or 'auto', got '{engine}'")
    outputs = [tree_flatten(fn(*shared, *(t[i] for t in per_task), vmapped=False))
               for i in range(per_task[0].shape[0])]
    columns = zip(*(leaves for leaves, _ in outputs), strict=True)
    stacked = [None if column[0] is None else torch.stack(column) for column in columns]
    return tree_unflatten(stacked, outputs[0][1])
