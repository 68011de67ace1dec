"""The convolution of the backbones, with a double backward built for second-order MAML."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_grads(grad_y, x, weight, conv, need_x: bool, need_weight: bool):
    """``(∂/∂x, ∂/∂weight)`` of ``⟨grad_y, conv2d(x, weight)⟩``: oneDNN's backward kernels."""
    stride, padding, dilation, groups = conv
    grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad_y, x, weight, None, stride, padding, dilation, False, [0] * len(stride), groups,
        [need_x, need_weight, False])
    return grad_x, grad_weight


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return b if a is None else a if b is None else a + b


class _Conv2d(torch.autograd.Function):
    """``conv2d(x, weight)`` (no bias) whose backward, :class:`_Conv2dBackward`, is an autograd
    op with its derivative written out over the convolution's own backward kernels.

    Second-order MAML differentiates every convolution's backward once more. PyTorch's double
    backward of a convolution computes all three of its terms with forward convolutions:
    the weight's term as a convolution whose kernel is the whole feature map, slow on CPU, and
    the input's gradient even when the input needs none — for the first layer a full-resolution
    transposed convolution down to the image channels, thrown away, in every inner step. Here
    the weight and input terms are ``convolution_backward``'s weight and input gradients, each
    computed only when needed; with channels-last images a 5-shot 84×84 step on CPU takes
    0.92× the time (docs/performance.md). Checked against finite differences to the third order
    and against PyTorch's own op in fp64 (``tests/models/backbones/test_task_conv.py``).
    """

    @staticmethod
    def forward(x, weight, stride, padding, dilation, groups):
        return F.conv2d(x, weight, None, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, *ctx.conv = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        need_x, need_weight = ctx.needs_input_grad[:2]
        grad_x, grad_weight = _Conv2dBackward.apply(grad_y, x, weight, need_x, need_weight, *ctx.conv)
        return grad_x, grad_weight, None, None, None, None

    @staticmethod
    def jvp(ctx, tangent_x, tangent_weight, *_):
        x, weight = ctx.saved_tensors
        return _add(None if tangent_x is None else F.conv2d(tangent_x, weight, None, *ctx.conv),
                    None if tangent_weight is None else F.conv2d(x, tangent_weight, None, *ctx.conv))


class _Conv2dBackward(torch.autograd.Function):
    """``(grad_y, x, weight) ↦ (grad_x, grad_weight)`` of a convolution, as a differentiable
    function (``None`` for an output not asked for).

    Bilinear: ``grad_x`` in (grad_y, weight), ``grad_weight`` in (grad_y, x). Given upstream
    gradients ``a`` of ``grad_x`` and ``b`` of ``grad_weight``: ``∂/∂grad_y = conv2d(a, weight)
    + conv2d(x, b)``, ``∂/∂x`` = the input gradient of ``conv2d(x, b)`` at ``grad_y``, ``∂/∂weight``
    = the weight gradient of ``conv2d(a, weight)`` at ``grad_y``. It keeps ``grad_y``, ``x`` and
    ``weight``, as PyTorch's own double backward does."""

    @staticmethod
    def forward(grad_y, x, weight, need_x, need_weight, stride, padding, dilation, groups):
        return _conv_grads(grad_y, x, weight, (stride, padding, dilation, groups), need_x, need_weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_y, x, weight, ctx.need_x, ctx.need_weight, *ctx.conv = inputs
        ctx.save_for_backward(grad_y, x, weight)
        ctx.save_for_forward(grad_y, x, weight)

    @staticmethod
    def backward(ctx, a, b):
        grad_y, x, weight = ctx.saved_tensors
        need_grad_y, need_x, need_weight = ctx.needs_input_grad[:3]
        of_grad_y = of_x = of_weight = None
        if need_grad_y:
            of_grad_y = _add(None if a is None else F.conv2d(a, weight, None, *ctx.conv),
                             None if b is None else F.conv2d(x, b, None, *ctx.conv))
        if need_x and b is not None:
            of_x = _conv_grads(grad_y, x, b, ctx.conv, True, False)[0]
        if need_weight and a is not None:
            of_weight = _conv_grads(grad_y, a, weight, ctx.conv, False, True)[1]
        return of_grad_y, of_x, of_weight, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, tangent_grad_y, tangent_x, tangent_weight, *_):
        grad_y, x, weight = ctx.saved_tensors
        tangent_grad_x = tangent_grad_weight = None
        if ctx.need_x:
            tangent_grad_x = _add(
                None if tangent_grad_y is None else _conv_grads(tangent_grad_y, x, weight, ctx.conv, True, False)[0],
                None if tangent_weight is None else _conv_grads(grad_y, x, tangent_weight, ctx.conv, True, False)[0])
        if ctx.need_weight:
            tangent_grad_weight = _add(
                None if tangent_grad_y is None else _conv_grads(tangent_grad_y, x, weight, ctx.conv, False, True)[1],
                None if tangent_x is None else _conv_grads(grad_y, tangent_x, weight, ctx.conv, False, True)[1])
        return tangent_grad_x, tangent_grad_weight


class TaskConv2d(nn.Conv2d):
    """``nn.Conv2d`` without bias, differentiated through :class:`_Conv2d` on CPU; on other
    devices, under ``vmap`` over tasks (``vmapped``), under autocast (``solver.precision=bf16``)
    and with no gradient to compute, PyTorch's own op. On an H200 the per-task loop's second-order step was 1.12× slower through
    :class:`_Conv2d` (docs/performance.md). Same parameters and state-dict keys as
    ``nn.Conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 vmapped: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.vmapped = bool(vmapped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.vmapped or x.device.type != "cpu" or not torch.is_grad_enabled()
                or torch.is_autocast_enabled(x.device.type)
                or not (x.requires_grad or self.weight.requires_grad)
                or self.padding_mode != "zeros" or isinstance(self.padding, str)):
            return super().forward(x)
        return _Conv2d.apply(x, self.weight, self.stride, self.padding, self.dilation, self.groups)
