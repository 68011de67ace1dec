"""The kernel-predictor metrics (lin_err, lin_agree, lin_acc) against an independent fp64
computation whose Jacobian-vector product is a central finite difference, on both engines; and
a network linear in its adapted parameters, where the tangent model is exact."""

import pytest
import torch

from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4
from naive_reference import Flat
from tests_helpers import as_double, tiny_batch

LR, STEPS = 0.4, 3


def naive_kernel_metrics(model, batch, adapted=None):
    """Per task: θˢ by plain steps, f_lin = f⁰ + (f(θ⁰ + hΔ) − f(θ⁰ − hΔ)) / 2h."""
    flat, h = Flat(model, LR, adapted), 1e-5
    err, agree, acc = [], [], []
    for i in range(batch.num_tasks):
        thetas, _ = flat.trajectory(batch.support_x[i], batch.support_y[i], STEPS, order="none")
        theta0, delta = thetas[0], thetas[-1] - thetas[0]
        qx = batch.query_x[i]
        with torch.no_grad():
            f0, fs = flat.logits(theta0, qx), flat.logits(thetas[-1], qx)
            jd = (flat.logits(theta0 + h * delta, qx) - flat.logits(theta0 - h * delta, qx)) / (2 * h)
        lin = f0 + jd
        err.append((fs - lin).norm() / (fs - f0).norm())
        agree.append((lin.argmax(-1) == fs.argmax(-1)).double().mean())
        acc.append((lin.argmax(-1) == batch.query_y[i]).double().mean())
    return {key: torch.stack(v).mean() for key, v in (("lin_err", err), ("lin_agree", agree), ("lin_acc", acc))}


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_kernel_metrics_match_a_finite_difference_reference(engine):
    torch.manual_seed(0)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=4).double()
    batch = as_double(tiny_batch(tasks=3))
    expected = naive_kernel_metrics(model, batch)
    algo = GBML(model, inner_lr=LR, inner_steps=STEPS, execution={"engine": engine})
    out = algo(batch)  # a first call in train mode is a logging step
    torch.testing.assert_close(out["lin_err"], expected["lin_err"], rtol=1e-6, atol=1e-9)
    assert float(out["lin_agree"]) == float(expected["lin_agree"])
    assert float(out["lin_acc"]) == float(expected["lin_acc"])
    assert 1e-3 < float(out["lin_err"])  # Conv4 is not linear in θ: the comparison is not of zeros
    assert not out["lin_err"].requires_grad
    with torch.no_grad():
        evaluated = algo.eval()(batch)
    torch.testing.assert_close(evaluated["lin_err"], expected["lin_err"], rtol=1e-6, atol=1e-9)


def test_off_and_on_non_logging_steps_they_are_not_computed():
    algo = GBML(Conv4(5, 1, 16, hidden=3), inner_steps=1, diagnostics={"metrics_period": 2})
    assert "lin_err" in algo(tiny_batch(), step=2) and "lin_err" not in algo(tiny_batch(), step=1)
    off = GBML(Conv4(5, 1, 16, hidden=3), inner_steps=1, diagnostics={"linearized_metrics": False})
    assert not {"lin_err", "lin_agree", "lin_acc"} & off(tiny_batch()).keys()


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_a_network_linear_in_its_adapted_parameters_is_its_own_kernel_predictor(engine):
    """ANIL adapts the head on fixed features: f is affine in A, so f_lin = fˢ exactly."""
    torch.manual_seed(0)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=4).double()
    batch = as_double(tiny_batch(tasks=2))
    out = GBML(model, inner_lr=LR, inner_steps=STEPS, adapt="head", execution={"engine": engine})(batch)
    assert float(out["lin_err"]) < 1e-12
    assert float(out["lin_agree"]) == 1.0 and float(out["lin_acc"]) == pytest.approx(float(out["acc"]), abs=1e-6)


@pytest.mark.parametrize("network", ["loop", "vmap"])
def test_the_jacobian_vector_product_matches_finite_differences(network):
    """Through the network each engine runs: the per-task network and the vmap engine's copy
    (the layers' own forward-mode derivatives either way)."""
    from lil_meta.models.algorithms.metrics import linearized_logits
    from lil_meta.models.backbones.layers import for_vmapped_tasks

    torch.manual_seed(0)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=4).double()
    x = as_double(tiny_batch(tasks=1)).query_x[0]
    theta = dict(model.named_parameters())
    g = torch.Generator().manual_seed(3)
    delta = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in theta.items()}
    net = model if network == "loop" else for_vmapped_tasks(model)
    f0, lin = linearized_logits(net, theta, delta, {}, x)
    h = 1e-7  # fp64: O(h²) truncation and ~1e-16/h rounding, both far below the tolerance
    with torch.no_grad():
        plus = torch.func.functional_call(model, {n: p + h * delta[n] for n, p in theta.items()}, (x,))
        minus = torch.func.functional_call(model, {n: p - h * delta[n] for n, p in theta.items()}, (x,))
    torch.testing.assert_close(lin - f0, (plus - minus) / (2 * h), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(f0, model(x).detach(), rtol=1e-12, atol=1e-12)
