"""One task's outputs, and the metrics of a meta-batch that are no loss term: linearity (PC, AC,
hₖ), the kernel predictor's, and where a NaN came from."""

from __future__ import annotations

from typing import NamedTuple

import torch

from lil_meta.engine.inner_loop import Trajectory, logits_at, network_call, query_step


class TaskOutputs(NamedTuple):
    """What :meth:`GBML.task_forward` gives for one task; after the task mapper every field
    gains a leading task dim ``[B]``.

    Fields:
        logits: the query logits at θˢ ``[Q, N]``.
        trajectory: the inner loop's :class:`~engine.inner_loop.Trajectory`.
        extras: each asking loss term's :meth:`~losses.base.OuterLoss.per_task` tensors, by key.
        logits_init: the query logits at θ⁰ (logging steps and evaluation; else ``None``).
        lin_init_logits, lin_logits: the tangent model's logits at θ⁰ and along θˢ − θ⁰
            (:func:`linearized_logits`; with the kernel metrics on, else ``None``).
    """

    logits: torch.Tensor
    trajectory: Trajectory
    extras: dict[str, dict[str, torch.Tensor]]
    logits_init: torch.Tensor | None = None
    lin_init_logits: torch.Tensor | None = None
    lin_logits: torch.Tensor | None = None

#: per-task boolean outputs that say where a non-finite loss came from, and what each means
NONFINITE_FLAGS = (
    ("task_inner_finite", "the inner loop diverged (non-finite trajectory)"),
    ("task_logits_finite", "non-finite query logits"),
)


def linearity_metrics(trajectory: Trajectory) -> dict[str, torch.Tensor]:
    """PC (eq. 3), and on logging steps AC (eq. 4) and the Hessian ratio of eq. 5: per task,
    then the mean over the meta-batch ``[B]``; no graph, and nothing when S = 0.

    ``hess_ratio`` is the mean of hₖ over steps k = 0..S-1 and tasks, ``hess_ratio_k<k>`` its
    mean per step, and ``hess_ge1`` the fraction of (task, step) pairs with hₖ ≥ 1 (steps
    predicted not to descend).
    """
    steps = trajectory.step_norms.shape[-1]
    if steps == 0:
        return {}
    with torch.no_grad():
        traj_len = trajectory.length
        metrics = {
            "traj_len": traj_len.mean(),
            "pc": (traj_len / trajectory.disp_norm.clamp_min(1e-12)).mean(),
        }
        if trajectory.final_grad_norm is not None:
            grad_norms = torch.cat([trajectory.grad_norms, trajectory.final_grad_norm[..., None]], -1)
            g0 = grad_norms[..., :1].clamp_min(1e-12)
            metrics["ac"] = (grad_norms[..., 1:] / g0).mean(-1).mean()
        if trajectory.hess_ratios is not None:
            ratios = trajectory.hess_ratios
            metrics["hess_ratio"] = ratios.mean()
            metrics["hess_ge1"] = (ratios >= 1).to(ratios.dtype).mean()
            for k in range(ratios.shape[-1]):
                metrics[f"hess_ratio_k{k}"] = ratios[..., k].mean()
        return metrics


def describe_nonfinite(out: dict, flags=NONFINITE_FLAGS, rank: int = 0) -> str | None:
    """Which tasks a non-finite loss came from, in words, from the per-task ``flags`` of an
    output dict (``None``: nothing to say). Reads the flags: for the fault path only. Tasks are
    numbered over the whole meta-batch: process ``rank`` holds the ``rank``-th share of it
    (:class:`engine.launch.RankSlice`)."""
    where = []
    for key, what in flags:
        flag = out.get(key)
        if isinstance(flag, torch.Tensor) and not bool(flag.all()):
            first = rank * flag.numel()
            tasks = [first + i for i in (~flag).nonzero().flatten().tolist()]
            where.append(f"{what} in task(s) {', '.join(map(str, tasks))}")
    return "; ".join(where) or None


def linearized_logits(model, theta0: dict, delta: dict, frozen: dict, query_x: torch.Tensor, step: int | None = None):
    """``(f⁰, f_lin)``: the query logits at θ⁰ and those of the tangent (kernel) model
    f_lin = f⁰ + J·Δ, J·Δ the forward-mode derivative of θ ↦ f(xq|θ) at θ⁰ in the direction
    Δ = θˢ − θ⁰ over the adapted tensors (``torch.func.jvp``; the held-fixed tensors and
    BatchNorm's batch statistics as in the forward itself). No graph: a diagnostic (paper §4.3,
    eq. 13–19). ``model`` must be forward-differentiable: PyTorch's layers are, and so are
    this project's own (:mod:`models.backbones.layers`, by their ``jvp``). ``step``: the network's
    inner step (:func:`~engine.inner_loop.network_call`), that of the query forward at θˢ."""
    fixed = {name: t.detach() for name, t in frozen.items()}
    x = query_x.detach().contiguous()

    def logits(adapted):
        return network_call(model, {**fixed, **adapted}, x, step)

    primal = {name: t.detach() for name, t in theta0.items()}
    tangent = {name: delta[name].detach() for name in primal}
    f0, jvp = torch.func.jvp(logits, (primal,), (tangent,))
    return f0, f0 + jvp


def diagnostic_logits(net, theta0: dict, theta_s: dict, frozen: dict, query_x: torch.Tensor, *, vmapped: bool,
                      linearized: bool, step: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One task's query logits for the diagnostics, without graph: ``(logits_init, lin_init_logits,
    lin_logits)``, the logits at θ⁰ and, with ``linearized``, the kernel predictor's
    (:func:`linearized_logits` along θˢ − θ⁰; else ``None``). The tangent pass runs through
    ``net`` itself (the engine's network; under vmap, its vmap form). For a network that takes
    the inner step, θ⁰'s logits are its query forward at θ⁰ (step 0) and the kernel predictor
    linearises the function that gives the logits at θˢ (``step``, that forward's)."""
    with torch.no_grad():
        init = logits_at(net, theta0, frozen, query_x, vmapped=vmapped, step=query_step(0))
    if not linearized:
        return init, None, None
    delta = {name: theta_s[name].detach() - t.detach() for name, t in theta0.items()}
    return (init, *linearized_logits(net, theta0, delta, frozen, query_x, step))


def kernel_metrics(logits: torch.Tensor, init_logits: torch.Tensor, lin_logits: torch.Tensor,
                   query_y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per task ``[B]``: ``task_lin_err`` ‖fˢ − f_lin‖ / ‖fˢ − f⁰‖ (Frobenius norms over the query
    logits; 0 for a linear inner loop), ``task_lin_agree`` the fraction of query examples where
    argmax f_lin = argmax fˢ, ``task_lin_acc`` the query accuracy of f_lin (the kernel
    predictor's); and their means over tasks ``lin_err``, ``lin_agree``, ``lin_acc``."""
    with torch.no_grad():
        adapted = logits.detach()
        err = (adapted - lin_logits).flatten(1).norm(dim=1) / (adapted - init_logits).flatten(1).norm(dim=1).clamp_min(
            1e-12)
        dtype = adapted.dtype  # fractions in the logits' precision: exact counts in fp64
        agree = (lin_logits.argmax(-1) == adapted.argmax(-1)).to(dtype).mean(1)
        acc = (lin_logits.argmax(-1) == query_y).to(dtype).mean(1)
        per_task = {"task_lin_err": err, "task_lin_agree": agree, "task_lin_acc": acc}
        return {**per_task, **{key[len("task_"):]: value.mean() for key, value in per_task.items()}}
