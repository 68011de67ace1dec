"""Trajectory norms: the norms of many parameter-sized vectors in one differentiable call.

The inner loop needs, per task, the step norms ``dₖ = ‖θᵏ⁺¹ − θᵏ‖`` and the gradient norms
``‖gᵏ‖``, each over all adapted tensors concatenated (docs/design.md §1). :func:`group_norms` takes the
tensors as a flat list of ``groups`` equal-length groups and returns one norm per group::

    d = group_norms(flat(θ¹..θˢ), flat(θ⁰..θˢ⁻¹), S)      # step norms, [S]
    n = group_norms(flat(g⁰..gᴷ), [], K + 1)              # gradient norms, [K+1]

Two backends give the same numbers: a fused Triton kernel (CUDA; one launch for every task,
group and tensor, see :mod:`engine.kernels.triton_group_norms`) and plain torch ops (CPU, and
the reference). Both are differentiable, work under ``torch.func.vmap`` (result ``[B, groups]``)
and ``torch.func.grad``; the gradient at a zero norm is defined as 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

BACKENDS = ("auto", "torch", "triton")


def _check(xs: Sequence[Tensor], ys: Sequence[Tensor], groups: int) -> None:
    if not xs:
        raise ValueError("group_norms: xs is empty")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
        raise ValueError(f"group_norms: groups must be a positive int, got {groups!r}")
    if len(xs) % groups:
        raise ValueError(f"group_norms: groups={groups} does not divide len(xs)={len(xs)}")
    if ys and len(ys) != len(xs):
        raise ValueError(f"group_norms: len(ys)={len(ys)} must be 0 or len(xs)={len(xs)}")
    ref = xs[0]
    for i, x in enumerate(xs):
        if x.dtype != ref.dtype or x.device != ref.device:
            raise ValueError(f"group_norms: xs[{i}] is {x.dtype} on {x.device}, "
                             f"xs[0] is {ref.dtype} on {ref.device}")
        if not x.is_floating_point():
            raise ValueError(f"group_norms: xs[{i}] has non-floating dtype {x.dtype}")
    for i, y in enumerate(ys):
        if y.shape != xs[i].shape or y.dtype != ref.dtype or y.device != ref.device:
            raise ValueError(f"group_norms: ys[{i}] is {tuple(y.shape)} {y.dtype} on {y.device}, "
                             f"xs[{i}] is {tuple(xs[i].shape)} {ref.dtype} on {ref.device}")


def group_norms_torch(xs: Sequence[Tensor], ys: Sequence[Tensor], groups: int) -> Tensor:
    """Pure-torch path: per-tensor sums of squares, summed per group, then a zero-safe sqrt.

    ``square().sum()`` rather than ``torch.linalg.vector_norm``: on CPU the latter accumulates
    fp32 poorly (relative error ~5e-4 at 12M elements), the pairwise sum does not. Plain autograd
    ops, so double backward and every ``torch.func`` transform work.
    """
    acc = torch.float64 if xs[0].dtype == torch.float64 else torch.float32
    per = [(x.to(acc) - ys[t].to(acc) if ys else x.to(acc)).square().sum() for t, x in enumerate(xs)]
    sq = torch.stack(per).view(groups, len(xs) // groups).sum(1)
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, 1).sqrt(), 0).to(xs[0].dtype)


def _triton_usable(x: Tensor) -> bool:
    if not x.is_cuda:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def group_norms(xs: Sequence[Tensor], ys: Sequence[Tensor], groups: int,
                backend: str = "auto") -> Tensor:
    """``out[g] = sqrt(Σ_{t in group g} ‖xs[t] − ys[t]‖²)`` (``ys`` empty: ``‖xs[t]‖²``).

    ``xs`` holds ``groups * P`` tensors, group ``g`` being ``xs[g*P:(g+1)*P]``; ``ys`` is empty
    or matches ``xs`` in length and shapes. Sums accumulate in fp32 (fp64 for fp64 inputs); the
    result has the inputs' dtype. ``backend``: ``"auto"`` (Triton for CUDA tensors, else torch),
    ``"torch"`` or ``"triton"`` (on CPU only under ``TRITON_INTERPRET=1``, for tests).
    Gradients flow to ``xs`` and ``ys`` (0 where a norm is 0); double backward works on both
    paths (the Triton path then falls back to torch ops for the backward); forward-mode AD only
    on the torch path.
    """
    if backend not in BACKENDS:
        raise ValueError(f"group_norms: backend must be one of {BACKENDS}, got {backend!r}")
    xs, ys = list(xs), list(ys)
    _check(xs, ys, groups)
    if backend == "auto":
        backend = "triton" if _triton_usable(xs[0]) else "torch"
    if backend == "torch":
        return group_norms_torch(xs, ys, groups)
    from lil_meta.engine.kernels.triton_group_norms import group_norms_triton

    return group_norms_triton(xs, ys, groups)
