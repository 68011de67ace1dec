"""Layers shared by the backbones."""

from __future__ import annotations

import copy

import torch
from torch import nn


class _BatchStatsNorm(torch.autograd.Function):
    """Training-mode batch norm whose backward is differentiable in plain torch ops.

    Second-order MAML differentiates each BatchNorm's backward once more (the inner gradient is
    part of the outer graph). PyTorch's own double backward of the fused op builds about fifty
    full-size tensors per layer; differentiating the compact backward below (Ioffe & Szegedy,
    2015, §3) builds about twenty (``docs/performance.md`` has the end-to-end effect). When no
    graph of the backward is needed (the outer backward, first-order steps) the fused
    ``native_batch_norm_backward`` runs instead. Checked against ``F.batch_norm`` with
    ``gradcheck``/``gradgradcheck`` in fp64 (``tests/models/backbones/test_conv4.py``).
    """

    @staticmethod
    def forward(x, weight, bias, eps):
        return torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, eps = inputs
        _, mean, rstd = output
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, rstd)

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_rstd):
        x, weight, mean, rstd = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return (*torch.ops.aten.native_batch_norm_backward(
                grad_y, x, weight, None, None, mean, rstd, True, ctx.eps, [True, True, True]), None)
        dims, count = (0, 2, 3), x.numel() // x.shape[1]
        centred = x - x.mean(dims, keepdim=True)  # recomputed: differentiable in x
        rstd = torch.rsqrt(centred.square().mean(dims, keepdim=True) + ctx.eps)
        x_hat = centred * rstd
        grad_bias = grad_y.sum(dims)
        grad_weight = (grad_y * x_hat).sum(dims)
        per_channel = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
        grad_x = (per_channel(weight) * rstd) * (
            grad_y - per_channel(grad_bias / count) - x_hat * per_channel(grad_weight / count))
        return grad_x, grad_weight, grad_bias, None


class TaskBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with the current batch's statistics (MAML convention).

    No running statistics are kept (``track_running_stats=False``): in the inner loop and the
    outer loop alike, a task's support or query set is normalised by its own mean and variance.

    ``vmapped``: the layer runs inside ``torch.func.vmap`` over tasks, and computes the
    statistics from elementary ops: there the fused batch-norm kernel's double backward (needed
    by second-order MAML) returned wrong gradients for the layers before it, whereas the
    elementary form matches the per-task reference to fp64 precision
    (``tests/engine/test_inner_loop.py``). Otherwise the fused kernel runs, with a backward that
    is cheap to differentiate again (:class:`_BatchStatsNorm`). The flag is fixed when the
    network is built: the vmap engine runs a copy of the network made with
    :func:`for_vmapped_tasks`, never a global switch.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, vmapped: bool = False):
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=False)
        self.vmapped = bool(vmapped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.vmapped:
            return _BatchStatsNorm.apply(x, self.weight, self.bias, self.eps)[0]
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        scale = self.weight[:, None, None] * torch.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias[:, None, None]


def for_vmapped_tasks(model: nn.Module) -> nn.Module:
    """A parameter-free copy of ``model`` (on the ``meta`` device) whose layers that compute
    differently under ``torch.func.vmap`` over tasks are built for it (``vmapped=True``).

    The vmap engine evaluates it with ``functional_call`` and the real tensors, so the copy
    holds none of its own; a layer of a user backbone opts in with a boolean ``vmapped``
    attribute. Hooks registered on ``model`` are not copied: they belong to the real network.
    """
    twin = copy.deepcopy(model).to("meta")
    for module in twin.modules():
        if isinstance(getattr(module, "vmapped", None), bool):
            module.vmapped = True
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                      "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            getattr(module, hooks, {}).clear()
    return twin
