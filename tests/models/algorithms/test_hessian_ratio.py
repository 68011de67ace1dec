"""The Hessian ratio hₖ of eq. 5 and the straight step along Δ⁰, against naive fp64 references.

The reference (``tests/naive_reference.py``) adapts one flat parameter vector per task with
explicit rates, takes gradients with ``torch.autograd.grad``; the Hessian itself comes from
``torch.autograd.functional.hessian``.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import hessian

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.losses.cross_entropy import CrossEntropy
from lil_meta.losses.phase import PhaseLoss, phase_kl
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4
from naive_reference import Flat, meta_objective
from tests_helpers import tiny_batch

STEPS = 3


def fp64_setup(mode, engine="loop", cls=GBML, seed=0, **kwargs):
    """A tiny fp64 Conv4 under ``mode`` rates; non-scalar rates drawn at random in [0.1, 0.6]."""
    torch.manual_seed(seed)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=2).double()
    algo = cls(model, inner_lr=0.4, inner_steps=STEPS, rates={"mode": mode}, execution={"engine": engine},
               diagnostics={"metrics_period": 1}, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for rate in algo.inner_lrs.buffers():
            rate.copy_(0.1 + 0.5 * torch.rand(rate.shape, generator=g, dtype=rate.dtype))
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in tiny_batch(tasks=2)))
    return model, algo, batch


def flat_view(model, algo):
    """The model's parameters as one vector and the rates α as a vector of the same layout."""
    return Flat(model, {n: algo.inner_lrs[n] for n, _ in model.named_parameters()})


def naive_hessian_ratios(model, algo, batch):
    """[tasks, S] of hₖ = ½ ΔₖᵀH(θᵏ)Δₖ / (−gᵏᵀΔₖ), H the explicit Hessian of the support loss."""
    flat = flat_view(model, algo)
    rows = []
    for i in range(batch.num_tasks):
        sx, sy = batch.support_x[i], batch.support_y[i]
        thetas, grads = flat.trajectory(sx, sy, STEPS, "none")
        row = []
        for k in range(STEPS):
            H = hessian(lambda v: F.cross_entropy(flat.logits(v, sx), sy), thetas[k])  # noqa: B023
            d = thetas[k + 1] - thetas[k]
            row.append(0.5 * (d @ H @ d) / -(grads[k] @ d))
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize("engine", ["loop", "vmap"])
@pytest.mark.parametrize("mode", ["scalar", "per_tensor", "per_element"])
def test_hess_ratio_matches_the_explicit_hessian(mode, engine):
    model, algo, batch = fp64_setup(mode, engine)
    ref = naive_hessian_ratios(model, algo, batch)
    out = algo(batch)
    torch.testing.assert_close(out["hess_ratio"], ref.mean(), rtol=1e-9, atol=1e-12)
    for k in range(STEPS):
        torch.testing.assert_close(out[f"hess_ratio_k{k}"], ref[:, k].mean(), rtol=1e-9, atol=1e-12)
    assert out["hess_ge1"].item() == pytest.approx((ref >= 1).double().mean().item())
    assert ref.abs().min() > 1e-4, "the reference must have curvature for the check to mean anything"


def test_hess_ratio_for_a_scalar_rate_is_alpha_gHg_over_twice_the_squared_gradient():
    model, algo, batch = fp64_setup("scalar")
    flat = flat_view(model, algo)
    sx, sy = batch.support_x[0], batch.support_y[0]
    thetas, grads = flat.trajectory(sx, sy, STEPS, "none")
    H = hessian(lambda v: F.cross_entropy(flat.logits(v, sx), sy), thetas[1])
    scalar_form = 0.4 * (grads[1] @ H @ grads[1]) / (2 * grads[1].square().sum())
    d = thetas[2] - thetas[1]
    torch.testing.assert_close(0.5 * (d @ H @ d) / -(grads[1] @ d), scalar_form, rtol=1e-10, atol=0)


def test_hess_ratio_only_on_logging_steps_and_without_graph():
    torch.manual_seed(0)
    algo = GBML(Conv4(5, 1, 16, hidden=4), inner_lr=0.5, inner_steps=2, diagnostics={"metrics_period": 2})
    outs = [algo(tiny_batch(), step=step) for step in range(3)]
    assert ["hess_ratio" in o for o in outs] == [True, False, True]
    assert not outs[0]["hess_ratio"].requires_grad and outs[0]["loss"].requires_grad
    off = GBML(Conv4(5, 1, 16, hidden=4), inner_lr=0.5, inner_steps=2, diagnostics={"metrics_period": 2, "hessian_ratio": False})
    assert "ac" in off(tiny_batch()) and "hess_ratio" not in off(tiny_batch(), step=0)


class FirstDirection(GBML):
    """Every step repeats the first step's gradient: an exactly straight inner loop."""

    def inner_update(self, params, grads, step):
        if step == 0:
            self._g0 = grads
        return super().inner_update(params, self._g0, step)


class NormalisedFirstDirection(FirstDirection):
    """A user's own update rule: fixed-length steps along the first gradient, tensor by tensor."""

    def inner_update(self, params, grads, step):
        if step == 0:
            self._g0 = grads
        return {n: p - 0.05 * self._g0[n] / self._g0[n].norm() for n, p in params.items()}


@pytest.mark.parametrize("cls", [FirstDirection, NormalisedFirstDirection])
@pytest.mark.parametrize("mode", ["scalar", "per_tensor", "per_element"])
@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_straight_inner_loop_gives_zero_phase_and_pc_one_under_any_rate(mode, cls, engine):
    model, algo, batch = fp64_setup(mode, engine, cls, losses=[CrossEntropy(), PhaseLoss(0.1)])
    out = algo(batch)
    assert out["phase_kl"].abs().item() < 1e-12
    torch.testing.assert_close(out["pc"], torch.tensor(1.0, dtype=torch.float64), rtol=1e-10, atol=0)


def test_per_element_rates_make_the_gradient_direction_miss_a_straight_loop():
    """The counterpart of the test above: along g⁰ instead of Δ⁰, a straight loop with
    per-element rates does not land on θ̂, so the phase check above can fail."""
    model, algo, batch = fp64_setup("per_element", cls=FirstDirection, losses=[CrossEntropy(), PhaseLoss(0.1)])
    flat = flat_view(model, algo)
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    _, (g0,) = flat.trajectory(sx, sy, 0, "none", final_grad=True)
    theta0 = flat.theta0.detach()
    final = theta0 - STEPS * flat.rates * g0
    along_g0 = theta0 - (STEPS * (flat.rates * g0).norm()) * g0 / g0.norm()
    assert phase_kl(flat.logits(final, qx)[None], flat.logits(along_g0, qx)[None]).item() > 1e-6


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_phase_kl_under_random_per_element_rates_uses_the_first_step(engine):
    model, algo, batch = fp64_setup("per_element", engine, losses=[CrossEntropy(), PhaseLoss(0.1)])
    ref = meta_objective(model, batch, steps=STEPS, order="none", phase_weight=0.1,
                         rates={n: algo.inner_lrs[n] for n, _ in model.named_parameters()})
    out = algo(batch)
    torch.testing.assert_close(out["phase_kl"], ref["phase_kl"], rtol=1e-9, atol=1e-14)
