"""Layers shared by the backbones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.inner_loop import tasks_vmapped


class TaskBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with the current batch's statistics (MAML convention).

    No running statistics are kept (``track_running_stats=False``): in the inner loop and the
    outer loop alike, a task's support or query set is normalised by its own mean and variance.

    Under ``torch.func.vmap`` over tasks the statistics are computed from elementary ops: there
    the fused batch-norm kernel's double backward (needed by second-order MAML) returned wrong
    gradients for the layers before it in torch 2.13, whereas the elementary form matches the
    per-task reference to fp64 precision (``tests/engine/test_inner_loop.py``). Outside vmap
    the fused ``F.batch_norm`` is used: it is correct there and several times cheaper to
    differentiate twice.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not tasks_vmapped():
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        scale = self.weight[:, None, None] * torch.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias[:, None, None]
