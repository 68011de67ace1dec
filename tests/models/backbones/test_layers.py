"""The layers' own autograd Functions (models/backbones/layers.py) in fp64: each derivative
against finite differences (gradcheck, gradgradcheck, forward mode), against PyTorch's own op,
and what each keeps for the outer backward."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from lil_meta.models.backbones.conv4 import Conv4
from lil_meta.models.backbones.layers import (
    TaskBatchNorm2d,
    TaskMaxPool2d,
    _at_argmax,
    _BatchNormBackward,
    _MaxPool2d,
)
from saved_tensors import graph_nodes, saved_by_op, saved_tensors_of
from tests_helpers import one_step_query_loss

DOUBLE = torch.float64


def _bn_backward(grad_y, x, weight):
    """The Function with the batch statistics of ``x`` (recomputed at every perturbed ``x``)."""
    mean = x.mean((0, 2, 3)).detach()
    rstd = torch.rsqrt(x.var((0, 2, 3), unbiased=False) + 1e-5).detach()
    return _BatchNormBackward.apply(grad_y, x, weight, mean, rstd, 1e-5)


@pytest.mark.parametrize("channels_last", [True])  # strided: the layout the query pass runs in
def test_batch_norm_backward_has_its_derivatives(channels_last):
    """The hand-written derivative of the batch-norm backward (what second-order MAML's outer
    backward runs) against finite differences, to the third order."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, 2, 3, dtype=DOUBLE)
    grad_y = torch.randn_like(x)
    if channels_last:
        x, grad_y = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad_y))
    weight = torch.rand(2, dtype=DOUBLE) + 0.5
    inputs = tuple(t.requires_grad_() for t in (grad_y, x, weight))
    assert gradcheck(_bn_backward, inputs)
    assert gradgradcheck(_bn_backward, inputs)


def test_batch_norm_backward_equals_the_gradient_of_f_batch_norm():
    torch.manual_seed(1)
    x = torch.randn(4, 3, 3, 3, dtype=DOUBLE, requires_grad=True)
    weight = (torch.rand(3, dtype=DOUBLE) + 0.5).requires_grad_()
    bias = torch.rand(3, dtype=DOUBLE, requires_grad=True)
    grad_y = torch.randn_like(x)
    expected = torch.autograd.grad(F.batch_norm(x, None, None, weight, bias, training=True), (x, weight, bias),
                                   grad_y)
    for a, b in zip(_bn_backward(grad_y, x, weight), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_task_batch_norm_forward_mode_matches_finite_differences():
    torch.manual_seed(2)
    bn = TaskBatchNorm2d(2).double()
    x = torch.randn(3, 2, 3, 3, dtype=DOUBLE, requires_grad=True)
    weight = (torch.rand(2, dtype=DOUBLE) + 0.5).requires_grad_()
    bias = torch.rand(2, dtype=DOUBLE, requires_grad=True)
    fn = lambda t, w, b: torch.func.functional_call(bn, {"weight": w, "bias": b}, (t,))  # noqa: E731
    assert gradcheck(fn, (x, weight, bias), check_forward_ad=True)


@pytest.mark.parametrize("size,channels_last", [(6, False), (5, True)])  # 5: a row and a column outside every window
def test_max_pool_matches_pytorch_to_second_order(size, channels_last):
    torch.manual_seed(3)
    x = torch.randn(1, 2, size, size, dtype=DOUBLE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    ours = lambda t: _MaxPool2d.apply(t, 2)[0]  # noqa: E731
    assert gradcheck(ours, (x,), check_forward_ad=True)
    assert gradgradcheck(ours, (x,))
    v, w = torch.randn(1, 2, size // 2, size // 2, dtype=DOUBLE), torch.randn_like(x)
    results = []
    for pool in (ours, lambda t: F.max_pool2d(t, 2)):  # value, gradient and H·w through a curved input
        out = pool(x.sin())
        (g,) = torch.autograd.grad((out.square() * v).sum(), x, create_graph=True)
        (hw,) = torch.autograd.grad((g * w).sum(), x)
        results.append((out, g, hw))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_task_max_pool_is_pytorchs_under_vmap_and_outside():
    x = torch.randn(2, 3, 4, 6, 6, dtype=DOUBLE)
    pool, twin = TaskMaxPool2d(2), TaskMaxPool2d(2, vmapped=True)
    expected = torch.stack([F.max_pool2d(t, 2) for t in x])
    torch.testing.assert_close(torch.stack([pool(t) for t in x]), expected, rtol=0, atol=0)
    torch.testing.assert_close(torch.func.vmap(twin)(x), expected, rtol=0, atol=0)


def test_the_second_order_graph_keeps_no_pooling_input_and_one_tensor_per_batch_norm_backward():
    """What a task's graph saves (benchmarks/saved_tensors.py): the pooling layers their int64
    indices only, and each batch-norm backward one tensor beyond its forward's."""
    torch.manual_seed(0)
    model = Conv4(num_classes=3, in_channels=1, image_size=16, hidden=4).double()
    support, query = torch.rand(6, 1, 16, 16, dtype=DOUBLE), torch.rand(9, 1, 16, 16, dtype=DOUBLE)
    _, loss = one_step_query_loss(model, support, query)
    table, _ = saved_by_op(loss)
    assert "MaxPool2DWithIndicesBackward0" not in table and "PowBackward0" not in table
    pool_saved = _saved_of(loss, "_MaxPool2dBackward") + _saved_of(loss, "_MaxUnpool2dBackward")
    assert pool_saved and all(t.dtype == torch.int64 for t in pool_saved)
    forward_saved = {t.untyped_storage().data_ptr() for t in _saved_of(loss, "_BatchStatsNormBackward")}
    backward_nodes = [n for n in graph_nodes(loss) if type(n).__name__ == "_BatchNormBackwardBackward"]
    assert len(backward_nodes) == 4  # one per layer of the one inner step
    for node in backward_nodes:
        own = [t for t in saved_tensors_of(node) if t.dim() == 4 and t.untyped_storage().data_ptr() not in forward_saved]
        assert len(own) == 1  # grad_y; x, weight and the statistics are the forward's


def _saved_of(loss, kind):
    return [t for node in graph_nodes(loss) if type(node).__name__ == kind for t in saved_tensors_of(node)]


@pytest.mark.parametrize("dtype", [torch.float32, DOUBLE])
@pytest.mark.parametrize("size", [8, 9])
def test_max_pool_of_an_nchw_input_equals_pytorchs_values_and_indices_with_ties(dtype, size):
    """The NCHW input is pooled channels-last: the same maxima, the same argmax in windows
    whose maximum is tied (ReLU's zeros, repeated rows) and the result laid out NCHW."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(3, 5, size, size, dtype=dtype))
    x[:, :, 1::3] = 0.5
    x[:, :2, :, 0:size - 1:2] = x[:, :2, :, 1::2]  # whole windows tied in two channels
    out, indices = _MaxPool2d.apply(x, 2)
    expected, expected_indices = F.max_pool2d(x, 2, return_indices=True)
    assert out.is_contiguous() and indices.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(indices, expected_indices)


@pytest.mark.parametrize("channels_last", [False, True])
def test_gathering_at_the_argmax_keeps_the_layout_and_the_values(channels_last):
    torch.manual_seed(7)
    x = torch.randn(3, 4, 6, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    _, indices = F.max_pool2d(x, 2, return_indices=True)
    grad = torch.randn_like(x)
    picked = _at_argmax(grad, indices)
    assert torch.equal(picked, grad.contiguous().flatten(2).gather(2, indices.contiguous().flatten(2)).view(indices.shape))
    assert picked.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _two_step_task_loss(norm, params, x, y):
    """One task's query loss after two second-order inner steps at rate 0.5 over a conv, a
    batch norm ``norm(h, γ, β)``, ReLU, mean pooling and a linear head — all four adapted, so
    γ, β differ per task inside the loop (what MAML adapts)."""

    def inner_loss(p):
        conv, gamma, beta, head = p
        h = norm(F.conv2d(x, conv, padding=1), gamma, beta)
        return F.cross_entropy(torch.relu(h).mean((2, 3)) @ head.T, y)

    for _ in range(2):
        grads = torch.func.grad(inner_loss)(params)
        params = tuple(p - 0.5 * g for p, g in zip(params, grads, strict=True))
    return inner_loss(params)


@pytest.mark.parametrize("shared", [False, True])
def test_batch_norm_under_vmap_is_the_per_task_reference_to_second_order(shared):
    """The vmap engine's batch norm (tasks folded into channels) gives the per-task loop's
    second-order meta-gradient in fp64, for the layers before it too; with ``shared`` the
    input is one tensor for every task (unbatched under vmap). PyTorch's own batching rule of
    the fused op is checked on the same case, to show the case tells a wrong rule apart (with
    torch 2.13 it is ~13 % off in the conv's gradient; if a later torch fixes it, that line goes)."""
    torch.manual_seed(0)
    tasks, n = 3, 6
    x = torch.randn(1 if shared else tasks, n, 2, 5, 5, dtype=DOUBLE)
    y = torch.randint(0, 3, (tasks, n))
    theta = (torch.randn(4, 2, 3, 3, dtype=DOUBLE, requires_grad=True),
             torch.rand(4, dtype=DOUBLE, requires_grad=True), torch.rand(4, dtype=DOUBLE, requires_grad=True),
             torch.randn(3, 4, dtype=DOUBLE, requires_grad=True))
    ours = lambda h, w, b: TaskBatchNorm2d._batch_stats(h, w, b, 1e-5)  # noqa: E731
    stock = lambda h, w, b: F.batch_norm(h, None, None, w, b, training=True, eps=1e-5)  # noqa: E731
    per_task = [x[0 if shared else i] for i in range(tasks)]
    reference = sum(_two_step_task_loss(stock, theta, per_task[i], y[i]) for i in range(tasks))
    expected = torch.autograd.grad(reference, theta)

    def batched(norm):
        fn = lambda xi, yi: _two_step_task_loss(norm, theta, xi, yi)  # noqa: E731
        loss = torch.func.vmap(fn, in_dims=(None if shared else 0, 0))(x[0] if shared else x, y).sum()
        return loss, torch.autograd.grad(loss, theta)

    loss, grads = batched(ours)
    torch.testing.assert_close(loss, reference, rtol=1e-13, atol=0)
    for g, e in zip(grads, expected, strict=True):
        assert ((g - e).norm() / e.norm()).item() < 1e-10
    if not shared:
        _, stock_grads = batched(stock)
        assert ((stock_grads[0] - expected[0]).norm() / expected[0].norm()).item() > 1e-3


def test_batch_norm_under_vmap_keeps_its_forward_mode_and_hessian_vector_products():
    """The kernel metrics (jvp) and the Hessian ratios (a vjp of the gradient) under vmap: the
    fused form's derivatives, batched, equal the per-task ones in fp64."""
    torch.manual_seed(1)
    x = torch.randn(3, 5, 4, 3, 3, dtype=DOUBLE)
    w, b = torch.rand(3, 4, dtype=DOUBLE), torch.rand(3, 4, dtype=DOUBLE)
    tw, tb = torch.randn(3, 4, dtype=DOUBLE), torch.randn(3, 4, dtype=DOUBLE)
    norm = lambda xi, wi, bi: TaskBatchNorm2d._batch_stats(xi, wi, bi, 1e-5).sin().sum()  # noqa: E731

    def jvp(xi, wi, bi, twi, tbi):
        return torch.func.jvp(lambda w_, b_: norm(xi, w_, b_), (wi, bi), (twi, tbi))[1]

    def hvp(xi, wi, bi, twi, tbi):
        g = lambda w_, b_: torch.func.grad(norm, argnums=(1, 2))(xi, w_, b_)  # noqa: E731
        return torch.func.vjp(g, wi, bi)[1]((twi, tbi))

    for fn in (jvp, hvp):
        batched = torch.func.vmap(fn)(x, w, b, tw, tb)
        looped = [fn(x[i], w[i], b[i], tw[i], tb[i]) for i in range(3)]
        stacked = torch.utils._pytree.tree_map(lambda *t: torch.stack(t), *looped)
        torch.testing.assert_close(batched, stacked, rtol=1e-12, atol=1e-12)
