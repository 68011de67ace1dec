"""MAML++'s fixes (LSLR, MSL, DA, CA), Reptile and Prototypical Networks, each against a naive fp64
reference written here from the definitions (docs/design.md §1.1c): one task at a time, every
gradient from ``torch.autograd.grad``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lil_meta.engine.errors import ConfigError
from lil_meta.losses.multi_step import MultiStepCE, importance
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.algorithms.mamlpp import MAMLPlusPlus
from lil_meta.models.algorithms.protonet import ProtoNet
from lil_meta.models.algorithms.reptile import Reptile
from lil_meta.models.backbones.conv4 import Conv4
from tests_helpers import random_batch

S, LR = 3, 0.4


def net(seed=0):
    torch.manual_seed(seed)
    return Conv4(num_classes=3, in_channels=1, image_size=16, hidden=4).double()


def naive_path(model, params, x, y, rates, first_order=False):
    """θ¹ … θˢ of θᵏ⁺¹ = θᵏ − αₖ,ₗ gᵏₗ, ``rates(k, name)`` the rate of tensor l at step k."""
    path = []
    for k in range(S):
        loss = F.cross_entropy(functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
        params = {n: p - rates(k, n) * (g.detach() if first_order else g)
                  for (n, p), g in zip(params.items(), grads, strict=True)}
        path.append(params)
    return path


def gradients(loss, algo):
    return torch.autograd.grad(loss, [p for p in algo.parameters() if p.requires_grad], allow_unused=True)


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_lslr_learns_one_rate_per_tensor_and_step(engine):
    model, batch = net(), random_batch(tasks=2)
    algo = GBML(model, inner_lr=LR, inner_steps=S, rates={"mode": "per_tensor", "learn": True, "per_step": True},
                execution={"engine": engine}, diagnostics={"metrics_period": 0})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # distinct rates per step and tensor
        for p in algo.inner_lrs.parameters():
            p.copy_(0.1 + 0.5 * torch.rand(p.shape, generator=g, dtype=p.dtype))
    rate_of = {n: algo.inner_lrs[n] for n in algo.inner_lrs.names}
    assert all(r.shape == (S,) for r in rate_of.values())
    out = algo(batch)
    theta = dict(model.named_parameters())
    ref = torch.stack([F.cross_entropy(functional_call(model, naive_path(
        model, theta, batch.support_x[i], batch.support_y[i], lambda k, n: rate_of[n][k])[-1], (batch.query_x[i],)),
        batch.query_y[i]) for i in range(2)]).mean()
    torch.testing.assert_close(out["loss"], ref, rtol=1e-12, atol=0)
    for a, b in zip(gradients(out["loss"], algo), gradients(ref, algo), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)  # the rates' gradients included
    with pytest.raises(ConfigError, match=r"algorithm\.rates\.per_step: per-step inner rates exist for the 3 "
                                          r"training steps only, but evaluation \(algorithm\.inner_steps_test\) "
                                          r"takes 5 steps"):
        GBML(model, inner_steps=S, inner_steps_test=5, rates={"per_step": True})


def test_msl_importance_vector_follows_mamlpp():
    torch.testing.assert_close(importance(3, 0, 10), torch.full((3,), 1 / 3, dtype=torch.float64))
    mid = importance(3, 5, 10)  # each non-final weight 1/3 - 5/30, the final 1/3 + 5*2/30
    torch.testing.assert_close(mid, torch.tensor([1 / 6, 1 / 6, 2 / 3], dtype=torch.float64))
    late = importance(3, 98, 100)  # 1/3 - 98/300 < the floor 0.03/3; the final capped at 1 - 2 * 0.01
    torch.testing.assert_close(late, torch.tensor([0.01, 0.01, 0.98], dtype=torch.float64))
    torch.testing.assert_close(importance(3, 10, 10), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_msl_weights_the_query_loss_after_every_step(engine):
    model, batch = net(), random_batch(tasks=2)
    term = MultiStepCE(anneal_iters=10)
    algo = GBML(model, inner_lr=LR, inner_steps=S, losses=[term], execution={"engine": engine},
                diagnostics={"metrics_period": 0})
    algo.begin_step(4)
    out = algo(batch, step=4)
    v = importance(S, 4, 10)
    theta = dict(model.named_parameters())
    per_task = []
    for i in range(2):
        path = naive_path(model, theta, batch.support_x[i], batch.support_y[i], lambda k, n: LR)
        per_task.append(torch.stack([F.cross_entropy(functional_call(model, p, (batch.query_x[i],)), batch.query_y[i])
                                     for p in path]))
    ref = (v * torch.stack(per_task).mean(0)).sum()
    torch.testing.assert_close(out["loss"], ref, rtol=1e-12, atol=0)
    for a, b in zip(gradients(out["loss"], algo), gradients(ref, algo), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert float(out["msl_final_weight"]) == pytest.approx(float(v[-1]))


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_da_is_first_order_before_its_iteration_and_second_order_from_it(engine):
    model, batch = net(), random_batch(tasks=2)
    algo = MAMLPlusPlus(model, first_order_until=5, inner_lr=LR, inner_steps=S, rates={"mode": "scalar"},
                        execution={"engine": engine}, diagnostics={"metrics_period": 0})
    theta = dict(model.named_parameters())

    def naive(first_order):
        loss = torch.stack([F.cross_entropy(functional_call(model, naive_path(
            model, theta, batch.support_x[i], batch.support_y[i], lambda k, n: LR, first_order)[-1],
            (batch.query_x[i],)), batch.query_y[i]) for i in range(2)]).mean()
        return torch.autograd.grad(loss, list(model.parameters()))

    for step, first_order in ((4, True), (5, False)):
        got = torch.autograd.grad(algo(batch, step=step)["loss"], list(model.parameters()))
        for a, b in zip(got, naive(first_order), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    fo, so = naive(True), naive(False)
    assert max((a - b).abs().max().item() for a, b in zip(fo, so, strict=True)) > 1e-4  # the orders differ


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_reptile_gradient_is_the_mean_step_and_sgd_takes_reptiles_update(engine):
    model, batch = net(), random_batch(tasks=2)
    algo = Reptile(model, inner_lr=LR, inner_steps=S, execution={"engine": engine}, diagnostics={"metrics_period": 0})
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    finals = []
    for i in range(2):  # S first-order SGD steps on support and query together
        x = torch.cat([batch.support_x[i], batch.query_x[i]])
        y = torch.cat([batch.support_y[i], batch.query_y[i]])
        finals.append({n: t.detach() for n, t in naive_path(model, dict(model.named_parameters()), x, y,
                                                            lambda k, n: LR, first_order=True)[-1].items()})
    mean_step = {n: torch.stack([f[n] for f in finals]).mean(0) - theta0[n] for n in theta0}
    algo(batch)["loss"].backward()
    for n, p in model.named_parameters():  # ∇ = mean(θ⁰ − θˢ)/(α·S)
        torch.testing.assert_close(p.grad, -mean_step[n] / (LR * S), rtol=1e-9, atol=1e-12)
    epsilon = 0.3
    torch.optim.SGD(model.parameters(), lr=epsilon * LR * S).step()
    for n, p in model.named_parameters():  # Reptile's update: θ⁰ + ε·mean(θˢ − θ⁰)
        torch.testing.assert_close(p.detach(), theta0[n] + epsilon * mean_step[n], rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="Reptile is first order by definition"):
        Reptile(model, first_order=False)


def test_protonet_logits_are_negative_squared_distances_to_the_class_means():
    model, batch = net(), random_batch(tasks=2)
    algo = ProtoNet(model)
    out = algo(batch)
    losses = []
    for i in range(2):
        fs = model.features(batch.support_x[i]).flatten(1)
        fq = model.features(batch.query_x[i]).flatten(1)
        protos = torch.stack([fs[batch.support_y[i] == c].mean(0) for c in range(3)])
        logits = -((fq[:, None, :] - protos[None]) ** 2).sum(-1)
        losses.append(F.cross_entropy(logits, batch.query_y[i], reduction="sum"))
        torch.testing.assert_close(out["task_acc"][i], (logits.argmax(-1) == batch.query_y[i]).float().mean())
    ref = torch.stack(losses).sum() / batch.query_y.numel()
    torch.testing.assert_close(out["loss"], ref, rtol=1e-10, atol=0)
    for a, b in zip(gradients(out["loss"], algo), gradients(ref, algo), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
    assert not {"pc", "ac", "hess_ratio", "lin_acc"} & out.keys()
    from lil_meta.losses.phase import PhaseLoss

    with pytest.raises(ConfigError, match="protonet trains on the query cross-entropy .* the terms phase need an "
                                          "inner loop"):
        ProtoNet(model, losses=[PhaseLoss(0.1)])
