"""TaskConv2d's Functions (models/backbones/task_conv.py): their derivatives against finite
differences to the third order, and a second-order MAML step against PyTorch's own convolution."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.utils._python_dispatch import TorchDispatchMode

from lil_meta.models.backbones.conv4 import Conv4
from lil_meta.models.backbones.task_conv import TaskConv2d, _Conv2d, _Conv2dBackward
from tests_helpers import one_step_query_loss

DOUBLE = torch.float64

CONV = ((1, 1), (1, 1), (1, 1), 1)  # stride, padding, dilation, groups


@pytest.mark.parametrize("need_x", [True, False])
def test_conv_and_its_backward_have_their_derivatives(need_x):
    """The convolution and its backward Function against finite differences, in reverse and
    forward mode, to the third order; with a constant input (the images) too."""
    torch.manual_seed(4)
    x = torch.randn(2, 3, 5, 5, dtype=DOUBLE, requires_grad=need_x)
    weight = torch.randn(4, 3, 3, 3, dtype=DOUBLE, requires_grad=True)
    grad_y = torch.randn(2, 4, 5, 5, dtype=DOUBLE, requires_grad=True)
    conv = lambda *t: _Conv2d.apply(*t, *CONV)  # noqa: E731
    backward = lambda *t: tuple(g for g in _Conv2dBackward.apply(*t, need_x, True, *CONV) if g is not None)  # noqa: E731
    for fn, inputs in ((conv, (x, weight)), (backward, (grad_y, x, weight))):
        assert gradcheck(fn, inputs, check_forward_ad=True)
        assert gradgradcheck(fn, inputs)
    expected = torch.autograd.grad(F.conv2d(x, weight, padding=1), (x, weight) if need_x else (weight,), grad_y)
    for a, b in zip(backward(grad_y, x, weight), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


class _ImagesGradients(TorchDispatchMode):
    """Counts the convolution ops that compute a gradient for (or transposed-convolve down to)
    a tensor of the images' shape."""

    def __init__(self, images_shape):
        super().__init__()
        self.images_shape, self.count = tuple(images_shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default):
            outs = out if isinstance(out, tuple) else (out,)
            self.count += sum(isinstance(t, torch.Tensor) and tuple(t.shape) == self.images_shape for t in outs)
        return out


def _second_order_step(model, support, query):
    """A second-order MAML step with one inner step: the query loss, its meta-gradient, and how
    many images-shaped gradients the outer backward's convolutions computed."""
    params, loss = one_step_query_loss(model, support, query)
    with _ImagesGradients(support.shape) as counter:
        meta_grads = torch.autograd.grad(loss, list(params.values()))
    return loss, meta_grads, counter.count


@pytest.mark.parametrize("channels_last", [False, True])
def test_second_order_step_equals_pytorchs_conv_without_the_images_gradient(channels_last):
    """Conv4 through :class:`TaskConv2d` against the same weights in PyTorch's ``nn.Conv2d``
    (fp64): the same loss and meta-gradient, and no gradient of the support images computed by
    the outer backward (PyTorch's own double backward computes one per inner step)."""
    torch.manual_seed(5)
    ours = Conv4(num_classes=3, in_channels=3, image_size=16, hidden=4).double()
    pytorchs = copy.deepcopy(ours)
    for block in pytorchs.features[:4]:
        plain = torch.nn.Conv2d(block[0].in_channels, block[0].out_channels, 3, padding=1, bias=False)
        plain.weight = block[0].weight
        block[0] = plain
    support, query = torch.rand(6, 3, 16, 16, dtype=DOUBLE), torch.rand(9, 3, 16, 16, dtype=DOUBLE)
    if channels_last:
        support, query = (t.contiguous(memory_format=torch.channels_last) for t in (support, query))
    loss, grads, images_grads = _second_order_step(ours, support, query)
    expected_loss, expected_grads, pytorchs_images_grads = _second_order_step(pytorchs, support, query)
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=0)
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert images_grads == 0 and pytorchs_images_grads == 1


def test_task_conv_is_pytorchs_under_vmap_off_the_cpu_and_without_gradients():
    torch.manual_seed(6)
    conv, twin = TaskConv2d(3, 4, 3, padding=1), TaskConv2d(3, 4, 3, padding=1, vmapped=True)
    twin.weight = conv.weight
    x = torch.randn(2, 5, 3, 6, 6)
    expected = torch.stack([F.conv2d(t, conv.weight, padding=1) for t in x])
    torch.testing.assert_close(torch.func.vmap(twin)(x), expected, rtol=0, atol=0)
    assert type(conv(x[0]).grad_fn).__name__ == "_Conv2dBackward"
    with torch.no_grad():
        torch.testing.assert_close(conv(x[0]), expected[0], rtol=0, atol=0)
    on_meta = TaskConv2d(3, 4, 3, padding=1).to("meta")  # stands in for CUDA: another device
    assert type(on_meta(x[0].to("meta")).grad_fn).__name__ == "ConvolutionBackward0"
