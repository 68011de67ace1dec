import pytest
import torch
from torch.func import functional_call

from lil_meta.engine.inner_loop import map_tasks
from lil_meta.models.backbones.conv4 import Conv4, conv_block
from lil_meta.models.backbones.layers import TaskBatchNorm2d, TaskMaxPool2d, for_vmapped_tasks


@pytest.mark.parametrize("image_size,channels,feat", [(84, 3, 64 * 5 * 5), (28, 1, 64), (32, 3, 64 * 2 * 2)])
def test_shapes_and_parameter_count(image_size, channels, feat):
    model = Conv4(num_classes=5, in_channels=channels, image_size=image_size)
    assert model(torch.rand(7, channels, image_size, image_size)).shape == (7, 5)
    assert model.head.in_features == feat
    convs = 9 * channels * 64 + 3 * 9 * 64 * 64
    bns = 4 * 2 * 64
    assert sum(p.numel() for p in model.parameters()) == convs + bns + feat * 5 + 5


def test_batch_norm_uses_batch_statistics_and_keeps_none():
    model = Conv4(num_classes=5, in_channels=1, image_size=28)
    bns = [m for m in model.modules() if isinstance(m, TaskBatchNorm2d)]
    assert len(bns) == 4 and all(m.running_mean is None for m in bns)
    assert not list(model.buffers())
    x = torch.rand(10, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model.train()(x))


def test_task_batch_norm_is_the_same_under_vmap_and_in_a_loop():
    """F.batch_norm per task, in a loop and under vmap (tasks folded into channels)."""
    bn = TaskBatchNorm2d(4).double()
    with torch.no_grad():
        bn.weight.uniform_()
        bn.bias.uniform_()
    x = torch.randn(3, 6, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    twin = for_vmapped_tasks(bn)  # the copy the vmap engine runs

    def per_task(xi, *, vmapped):
        layer = twin if vmapped else bn
        return functional_call(layer, dict(bn.named_parameters()), (xi,)).square().sum()

    outs = {engine: map_tasks(per_task, (), (x,), engine) for engine in ("vmap", "loop")}
    torch.testing.assert_close(outs["vmap"], outs["loop"])
    expected = torch.stack([
        torch.nn.functional.batch_norm(xi, None, None, bn.weight, bn.bias, training=True, eps=bn.eps).square().sum()
        for xi in x
    ])
    torch.testing.assert_close(outs["loop"], expected)
    grads = [torch.autograd.grad(outs[e].sum(), [x, bn.weight]) for e in ("vmap", "loop")]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_too_small_image_is_refused():
    with pytest.raises(ValueError, match="data.image_size: conv4 needs >= 16"):
        Conv4(image_size=8)


def _value_grad_and_hvp(fn, x, v):
    """fn(x), its gradient and the Hessian-vector product H·v, in one graph."""
    out = fn(x).sin().sum()
    (g,) = torch.autograd.grad(out, x, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), x)
    return out, g, hv


@pytest.mark.parametrize("act", [torch.nn.ReLU(), torch.nn.LeakyReLU(0.1)])
def test_pool_before_activation_is_the_same_function_to_second_order(act):
    """The blocks pool before the (monotone) activation; value, gradient and H·v must equal
    those of the textbook activation-then-pool order, all-negative (tied-at-zero) windows included."""
    torch.manual_seed(0)
    pool = torch.nn.MaxPool2d(2)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    x[0, 0, :2, :2] = -torch.rand(2, 2, dtype=torch.float64) - 0.5  # a window with no positive entry
    x.requires_grad_(True)
    v = torch.randn_like(x)
    textbook = _value_grad_and_hvp(lambda t: pool(act(t)) * t.new_tensor(1.5), x, v)
    ours = _value_grad_and_hvp(lambda t: act(pool(t)) * t.new_tensor(1.5), x, v)
    for a, b in zip(textbook, ours, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    block = conv_block(4, 4)
    assert [type(m) for m in block][2:] == [TaskMaxPool2d, torch.nn.ReLU]


@pytest.mark.parametrize("channels_last", [False, True])
def test_task_batch_norm_matches_f_batch_norm_to_second_order(channels_last):
    """Outside vmap TaskBatchNorm2d has its own backward (cheaper to differentiate again): its
    value, gradient and H·v must be F.batch_norm's, and it must pass gradcheck/gradgradcheck."""
    torch.manual_seed(0)
    bn = TaskBatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_()
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    v = torch.randn_like(x)
    ours = lambda t: bn(t)  # noqa: E731
    fused = lambda t: torch.nn.functional.batch_norm(t, None, None, bn.weight, bn.bias, training=True)  # noqa: E731
    for a, b in zip(_value_grad_and_hvp(ours, x, v), _value_grad_and_hvp(fused, x, v), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the weight's first and second derivatives too, by finite differences
    assert torch.autograd.gradcheck(lambda t, w, b: _with(bn, w, b)(t), (x, bn.weight, bn.bias))
    assert torch.autograd.gradgradcheck(lambda t, w, b: _with(bn, w, b)(t), (x, bn.weight, bn.bias))
    # the fused backward (no graph needed) and the differentiable one agree
    (plain,) = torch.autograd.grad((bn(x) * v).sum(), x)
    (graphed,) = torch.autograd.grad((bn(x) * v).sum(), x, create_graph=True)
    torch.testing.assert_close(plain, graphed.detach(), rtol=1e-10, atol=1e-12)


def _with(bn, weight, bias):
    """A copy of ``bn`` whose affine parameters are the given tensors (for gradcheck)."""
    clone = TaskBatchNorm2d(bn.num_features).double()
    del clone.weight, clone.bias
    clone.weight, clone.bias = weight, bias
    return clone
