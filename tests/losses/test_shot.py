"""SHOT's two terms against a naive per-task computation in fp64 (``tests/naive_reference.py``):
the values and the meta-gradient of the total loss, both engines, scalar and per-element rates."""

import pytest
import torch
import torch.nn.functional as F

from lil_meta.engine.config import load_config
from lil_meta.losses import build_losses
from lil_meta.models import build_algorithm
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4
from naive_reference import Flat, kl
from tests_helpers import ROOT, as_double, tiny_batch

LR, STEPS = 0.4, 3


def naive_shot(model, batch, *, rates, steps, ref_scale, w_shot, w_one):
    """CE + w_shot · KL(P_ref ‖ P_S) + w_one · KL(stopgrad P_S ‖ P_1), means over tasks."""
    flat = Flat(model, rates)
    ref_rates = flat.rates / ref_scale
    ce, shot, one = [], [], []
    for i in range(batch.num_tasks):
        sx, sy, qx = batch.support_x[i], batch.support_y[i], batch.query_x[i]
        thetas, _ = flat.trajectory(sx, sy, steps)
        query = flat.logits(thetas[-1], qx)
        ce.append(F.cross_entropy(query, batch.query_y[i]))
        theta = flat.theta0.detach()
        for _ in range(ref_scale * steps):  # the reference: m·S steps at α/m, no graph
            theta = theta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(flat.loss(theta, sx, sy), theta)
            theta = (theta - ref_rates * g).detach()
        shot.append(kl(flat.logits(theta, qx).detach(), query))
        long_step = thetas[0] + steps * (thetas[1] - thetas[0])
        one.append(kl(query.detach(), flat.logits(long_step, qx)))
    ce, shot, one = (torch.stack(v).mean() for v in (ce, shot, one))
    return ce + w_shot * shot + w_one * one, shot, one


@pytest.mark.parametrize("engine", ["loop", "vmap"])
@pytest.mark.parametrize("rate_mode", ["scalar", "per_element"])
def test_shot_terms_and_meta_gradient_match_the_naive_reference(engine, rate_mode):
    torch.manual_seed(0)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=4).double()
    losses = build_losses([{"name": "cross_entropy"}, {"name": "shot", "weight": 0.1, "ref_scale": 2},
                           {"name": "shot_one_step", "weight": 0.3}])
    algo = GBML(model, inner_lr=LR, inner_steps=STEPS, losses=losses, execution={"engine": engine}, rates={"mode": rate_mode}).double()
    if rate_mode == "per_element":
        with torch.no_grad():  # distinct rates per element, so a wrong rescaling cannot pass
            for name in algo.inner_lrs.names:
                rate = algo.inner_lrs[name]
                rate.copy_(LR * (0.5 + torch.rand(rate.shape, generator=torch.Generator().manual_seed(1))))
        rates = {name: algo.inner_lrs[name] for name in algo.inner_lrs.names}
    else:
        rates = LR
    batch = as_double(tiny_batch(tasks=2))
    total, shot, one = naive_shot(model, batch, rates=rates, steps=STEPS, ref_scale=2, w_shot=0.1, w_one=0.3)
    ref_grads = torch.autograd.grad(total, list(model.parameters()))
    out = algo(batch)
    torch.testing.assert_close(out["shot_kl"], shot.detach(), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(out["shot_one_step_kl"], one.detach(), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(out["loss_shot"], 0.1 * shot.detach(), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(out["loss_shot_one_step"], 0.3 * one.detach(), rtol=1e-6, atol=1e-12)
    assert out["shot_kl"] > 1e-6 and out["shot_one_step_kl"] > 1e-6  # the comparison is not of zeros
    out["loss"].backward()
    for p, ref in zip(model.parameters(), ref_grads, strict=True):
        torch.testing.assert_close(p.grad, ref, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_a_reference_of_the_same_trajectory_gives_zero_and_no_gradient(engine):
    torch.manual_seed(0)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=4).double()
    losses = build_losses([{"name": "shot", "weight": 1.0, "ref_scale": 1}])
    out = GBML(model, inner_lr=LR, inner_steps=STEPS, losses=losses, execution={"engine": engine})(as_double(tiny_batch(tasks=2)))
    assert abs(float(out["shot_kl"])) < 1e-12
    grads = torch.autograd.grad(out["loss"], list(model.parameters()), allow_unused=True)
    assert max(float(g.abs().max()) for g in grads if g is not None) < 1e-9


def test_with_no_inner_step_both_terms_are_zero():
    torch.manual_seed(0)
    losses = build_losses([{"name": "cross_entropy"}, {"name": "shot"}, {"name": "shot_one_step"}])
    out = GBML(Conv4(5, 1, 16, hidden=3), inner_steps=0, losses=losses)(tiny_batch())
    assert float(out["shot_kl"]) == 0.0 and float(out["shot_one_step_kl"]) == 0.0


@pytest.mark.parametrize("config", ["maml_shot_5shot.yaml", "maml_shot_one_step_1shot.yaml"])
def test_the_configs_build_the_documented_terms(config):
    cfg = load_config(ROOT / "configs" / config, ["data.image_size=16", "model.backbone.hidden=3"])
    algo = build_algorithm(cfg)
    assert [(t.key, t.weight) for t in algo.losses][1][1] == 0.1
    out = algo(tiny_batch())
    assert {"loss_ce", "loss", "acc"} <= out.keys() and ("shot_kl" in out or "shot_one_step_kl" in out)
