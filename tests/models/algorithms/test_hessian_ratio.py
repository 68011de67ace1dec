"""The Hessian ratio hₖ of eq. 5 and the straight step along Δ⁰, against naive fp64 references.

The reference adapts one flat parameter vector per task with explicit rates, takes gradients
with ``torch.autograd.grad`` and the Hessian itself with ``torch.autograd.functional.hessian``.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import hessian

from datasets.task_batch import TaskBatch
from losses.cross_entropy import CrossEntropy
from losses.phase import PhaseLoss, phase_kl
from models.algorithms.base import GBML
from models.backbones.conv4 import Conv4
from tests_helpers import tiny_batch

STEPS = 3


def fp64_setup(mode, engine="loop", cls=GBML, seed=0, **kwargs):
    """A tiny fp64 Conv4 under ``mode`` rates; non-scalar rates drawn at random in [0.1, 0.6]."""
    torch.manual_seed(seed)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=2).double()
    algo = cls(model, inner_lr=0.4, inner_steps=STEPS, engine=engine, inner_lr_mode=mode,
               metrics_period=1, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for rate in algo.inner_lrs.buffers():
            rate.copy_(0.1 + 0.5 * torch.rand(rate.shape, generator=g, dtype=rate.dtype))
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in tiny_batch(tasks=2)))
    return model, algo, batch


class Flat:
    """The model's parameters as one vector, and the rates α as a vector of the same layout."""

    def __init__(self, model, algo):
        self.model, self.names = model, [n for n, _ in model.named_parameters()]
        self.shapes = [p.shape for p in model.parameters()]
        self.sizes = [p.numel() for p in model.parameters()]
        self.theta0 = torch.cat([p.detach().flatten() for p in model.parameters()])
        self.rates = torch.cat([torch.as_tensor(algo.inner_lrs[n], dtype=torch.float64).expand(s).flatten()
                                for n, s in zip(self.names, self.shapes, strict=True)])

    def logits(self, vec, x):
        tensors = [t.view(s) for t, s in zip(vec.split(self.sizes), self.shapes, strict=True)]
        return torch.func.functional_call(self.model, dict(zip(self.names, tensors, strict=True)), (x,))

    def trajectory(self, sx, sy):
        """θ⁰..θˢ and g⁰..gˢ⁻¹ of the plain update θᵏ⁺¹ = θᵏ − α ⊙ gᵏ."""
        thetas, grads = [self.theta0], []
        for _ in range(STEPS):
            theta = thetas[-1].detach().requires_grad_()
            (g,) = torch.autograd.grad(F.cross_entropy(self.logits(theta, sx), sy), theta)
            grads.append(g)
            thetas.append(thetas[-1] - self.rates * g)
        return thetas, grads


def naive_hessian_ratios(model, algo, batch):
    """[tasks, S] of hₖ = ½ ΔₖᵀH(θᵏ)Δₖ / (−gᵏᵀΔₖ), H the explicit Hessian of the support loss."""
    flat = Flat(model, algo)
    rows = []
    for i in range(batch.num_tasks):
        sx, sy = batch.support_x[i], batch.support_y[i]
        thetas, grads = flat.trajectory(sx, sy)
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
    flat = Flat(model, algo)
    sx, sy = batch.support_x[0], batch.support_y[0]
    thetas, grads = flat.trajectory(sx, sy)
    H = hessian(lambda v: F.cross_entropy(flat.logits(v, sx), sy), thetas[1])
    scalar_form = 0.4 * (grads[1] @ H @ grads[1]) / (2 * grads[1].square().sum())
    d = thetas[2] - thetas[1]
    torch.testing.assert_close(0.5 * (d @ H @ d) / -(grads[1] @ d), scalar_form, rtol=1e-10, atol=0)


def test_hess_ratio_only_on_logging_steps_and_without_graph():
    torch.manual_seed(0)
    algo = GBML(Conv4(5, 1, 16, hidden=4), inner_lr=0.5, inner_steps=2, metrics_period=2)
    outs = [algo(tiny_batch()) for _ in range(3)]
    assert ["hess_ratio" in o for o in outs] == [True, False, True]
    assert not outs[0]["hess_ratio"].requires_grad and outs[0]["loss"].requires_grad
    off = GBML(Conv4(5, 1, 16, hidden=4), inner_lr=0.5, inner_steps=2, metrics_period=2, hessian_ratio=False)
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
    flat = Flat(model, algo)
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    theta = flat.theta0.clone().requires_grad_()
    (g0,) = torch.autograd.grad(F.cross_entropy(flat.logits(theta, sx), sy), theta)
    final = flat.theta0 - STEPS * flat.rates * g0
    along_g0 = flat.theta0 - (STEPS * (flat.rates * g0).norm()) * g0 / g0.norm()
    assert phase_kl(flat.logits(final, qx)[None], flat.logits(along_g0, qx)[None]).item() > 1e-6


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_phase_kl_under_random_per_element_rates_uses_the_first_step(engine):
    model, algo, batch = fp64_setup("per_element", engine, losses=[CrossEntropy(), PhaseLoss(0.1)])
    flat = Flat(model, algo)
    kls = []
    for i in range(batch.num_tasks):
        thetas, _ = flat.trajectory(batch.support_x[i], batch.support_y[i])
        d0 = thetas[1] - thetas[0]
        length = sum((thetas[k + 1] - thetas[k]).norm() for k in range(STEPS))
        theta_hat = thetas[0] + length * d0 / d0.norm()
        p = torch.softmax(flat.logits(thetas[-1], batch.query_x[i]), -1)
        q = torch.softmax(flat.logits(theta_hat, batch.query_x[i]), -1)
        kls.append((p * (p.log() - q.log())).sum(-1).mean())
    out = algo(batch)
    torch.testing.assert_close(out["phase_kl"], torch.stack(kls).mean().detach(), rtol=1e-9, atol=1e-14)
