"""The functional inner loop against independent references (docs/design.md §1).

The reference (``tests/naive_reference.py``) is the plain way MAML is usually written: one task
at a time, a ``torch.autograd.grad(create_graph=True)`` per inner step, in fp64.
"""

import pytest
import torch
from torch import nn

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4
from naive_reference import meta_gradient
from tests_helpers import random_batch

WAY, SHOT, QUERY, TASKS, LR, STEPS = 3, 2, 3, 3, 0.4, 3


def make_batch(channels=1, dtype=torch.float64, seed=0):
    return random_batch(TASKS, WAY, SHOT, QUERY, size=16, channels=channels, dtype=dtype, seed=seed)


def engine_meta_gradient(algo, batch):
    algo.zero_grad(set_to_none=True)
    out = algo(batch)
    out["loss"].backward()
    return out["loss"].detach(), [p.grad for p in algo.parameters()]


def assert_close_rel(actual, expected, rtol):
    for a, e in zip(actual, expected, strict=True):
        scale = e.abs().max().clamp_min(1e-12)
        assert ((a - e).abs().max() / scale).item() < rtol


@pytest.mark.parametrize("engine", ["vmap", "loop"])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_per_task_reference_fp64(engine, first_order):
    torch.manual_seed(0)
    model = Conv4(num_classes=WAY, in_channels=1, image_size=16, hidden=6).double()
    algo = GBML(model, inner_lr=LR, inner_steps=STEPS, first_order=first_order, execution={"engine": engine})
    batch = make_batch()
    ref_loss, ref_grads = meta_gradient(model, batch, steps=STEPS, lr=LR, first_order=first_order)
    loss, grads = engine_meta_gradient(algo, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    assert_close_rel(grads, ref_grads, rtol=1e-8)


@pytest.mark.parametrize("engine", ["vmap", "loop"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("layout", ["none", "query", "all"])
def test_channels_last_layouts_give_the_reference_meta_gradient_fp64(engine, first_order, layout):
    """``channels_last`` changes the memory layout only: same loss and meta-gradient as the
    reference, and the layout really reaches the convolutions."""
    torch.manual_seed(0)
    model = Conv4(num_classes=WAY, in_channels=3, image_size=16, hidden=6).double()
    algo = GBML(model, inner_lr=LR, inner_steps=STEPS, first_order=first_order, execution={"engine": engine, "channels_last": layout})
    batch = make_batch(channels=3)
    ref_loss, ref_grads = meta_gradient(model, batch, steps=STEPS, lr=LR, first_order=first_order)
    seen = []

    def record_layout(module, args, out):
        if engine == "loop":  # vmap's batched tensors cannot be asked for their layout
            seen.append((args[0].shape[0], out.is_contiguous(memory_format=torch.channels_last)))

    hook = model.features[0][0].register_forward_hook(record_layout)
    loss, grads = engine_meta_gradient(algo, batch)
    hook.remove()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    assert_close_rel(grads, ref_grads, rtol=1e-8)
    if engine == "loop":
        assert dict(seen) == {WAY * SHOT: layout == "all", WAY * QUERY: layout != "none"}


def test_channels_last_auto_follows_the_device_the_double_backward_and_the_convolutions():
    model = Conv4(num_classes=WAY, in_channels=3, image_size=16, hidden=6)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert GBML(model).policy(cpu).channels_last == "all"  # its convolutions are TaskConv2d
    assert GBML(model, execution={"engine": "vmap"}).policy(cpu).channels_last == "query"  # vmap runs PyTorch's conv
    plain = Conv4(num_classes=WAY, in_channels=3, image_size=16, hidden=6)
    plain.features[0][0] = torch.nn.Conv2d(3, 6, 3, padding=1, bias=False)  # PyTorch's double backward
    assert GBML(plain).policy(cpu).channels_last == "query"
    assert GBML(plain, first_order=True).policy(cpu).channels_last == "all"
    assert GBML(plain, adapt="head").policy(cpu).channels_last == "all"
    assert GBML(plain, adapt="head", execution={"precompute_features": False}).policy(cpu).channels_last == "query"
    assert GBML(model).policy(cuda).channels_last == "none"
    with pytest.raises(ValueError, match="algorithm.execution.channels_last: expected one of auto, none, query, all"):
        GBML(model, execution={"channels_last": "yes"})


def test_second_order_differs_from_first_order():
    """Guards the reference itself: the two gradients must not coincide on a non-linear model."""
    torch.manual_seed(0)
    model = Conv4(num_classes=WAY, in_channels=1, image_size=16, hidden=6).double()
    batch = make_batch()
    _, so = meta_gradient(model, batch, steps=STEPS, lr=LR, first_order=False)
    _, fo = meta_gradient(model, batch, steps=STEPS, lr=LR, first_order=True)
    assert max((a - b).abs().max().item() for a, b in zip(so, fo, strict=True)) > 1e-4


def test_vmap_and_loop_agree_fp32():
    torch.manual_seed(1)
    model = Conv4(num_classes=WAY, in_channels=3, image_size=16, hidden=8)
    batch = make_batch(channels=3, dtype=torch.float32, seed=3)
    results = {}
    for engine in ("vmap", "loop"):
        algo = GBML(model, inner_lr=LR, inner_steps=STEPS, execution={"engine": engine})
        results[engine] = engine_meta_gradient(algo, batch)
    # fp32 summation order differs between the paths, with the thread count and with the host's
    # instruction set (differences up to about 1e-5 seen); 1e-4 is ten times that, far below the
    # size of a wrong term. The fp64 tests above are the exact references.
    torch.testing.assert_close(results["vmap"][0], results["loop"][0], rtol=1e-4, atol=1e-4)
    for a, b in zip(results["vmap"][1], results["loop"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


class TwoLayer(nn.Module):
    def __init__(self, dim=4, hidden=5, way=WAY):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(dim, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, way)

    def forward(self, x):
        return self.head(self.features(x))


def test_second_order_meta_gradient_matches_finite_differences():
    """Directional derivatives of θ⁰ ↦ L(θˢ(θ⁰)) by central differences, in fp64."""
    torch.manual_seed(0)
    model = TwoLayer().double()
    algo = GBML(model, inner_lr=0.7, inner_steps=2, execution={"engine": "vmap"})
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(
        torch.randn(2, WAY * SHOT, 1, 2, 2, generator=g, dtype=torch.float64),
        torch.arange(WAY).repeat_interleave(SHOT).repeat(2, 1),
        torch.randn(2, WAY * QUERY, 1, 2, 2, generator=g, dtype=torch.float64),
        torch.arange(WAY).repeat_interleave(QUERY).repeat(2, 1),
    )
    _, grads = engine_meta_gradient(algo, batch)
    params = list(model.parameters())
    eps = 1e-6
    for _ in range(5):
        direction = [torch.randn_like(p) for p in params]
        with torch.no_grad():
            for p, v in zip(params, direction, strict=True):
                p.add_(eps * v)
            plus = algo(batch)["loss"].item()
            for p, v in zip(params, direction, strict=True):
                p.sub_(2 * eps * v)
            minus = algo(batch)["loss"].item()
            for p, v in zip(params, direction, strict=True):
                p.add_(eps * v)
        numeric = (plus - minus) / (2 * eps)
        analytic = sum((gr * v).sum() for gr, v in zip(grads, direction, strict=True)).item()
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic))


def test_a_parameter_without_requires_grad_still_adapts_the_same_in_both_engines():
    """The loop takes second-order inner gradients with autograd.grad; a parameter that does not
    require grad (frozen by the user) must not break it, and vmap (torch.func.grad) must agree."""
    batch = make_batch()
    grads = {}
    for engine in ("loop", "vmap"):
        torch.manual_seed(0)
        model = Conv4(num_classes=WAY, in_channels=1, image_size=16, hidden=6).double()
        model.head.bias.requires_grad_(False)
        algo = GBML(model, inner_lr=LR, inner_steps=STEPS, execution={"engine": engine})
        _, grads[engine] = engine_meta_gradient(algo, batch)
        assert model.head.bias.grad is None
    assert_close_rel([g for g in grads["loop"] if g is not None], [g for g in grads["vmap"] if g is not None], 1e-8)
