"""MAML++ through its config (LSLR + BNWB + MSL, Conv4, S = 3) against an independent fp64
implementation of the definitions (docs/design.md §1.1c), written here with ``torch.nn.functional``
alone: one task at a time, every inner gradient from ``torch.autograd.grad``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lil_meta.engine.build import build_training
from lil_meta.engine.config import load_config
from lil_meta.engine.errors import ConfigError
from lil_meta.losses.multi_step import importance
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.algorithms.protonet import ProtoNet
from lil_meta.models.backbones.layers import per_step_parameters
from tests_helpers import random_batch

S = 3
CONFIG = Path(__file__).resolve().parents[3] / "configs" / "mamlpp_5shot.yaml"
SMALL = ["data.way=3", "data.channels=1", "data.image_size=16", "model.backbone.hidden=4",
         "algorithm.inner_steps=3", "algorithm.inner_steps_test=3", "solver.max_iter=30"]


def conv4(params, x, row):
    """Conv4 with per-step BatchNorm: conv3×3 → BN (batch statistics, row ``row`` of γ, β) →
    ReLU → max-pool 2, four times; flatten; linear head."""
    for i in range(4):
        x = F.conv2d(x, params[f"features.{i}.0.weight"], padding=1)
        x = F.batch_norm(x, None, None, params[f"features.{i}.1.weight"][row], params[f"features.{i}.1.bias"][row],
                         training=True, eps=1e-5)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), params["head.weight"], params["head.bias"])


def reference_loss(params, bn_names, rates, batch, weights, first_order):
    """Σₖ vₖ CE(f(xq|θᵏ⁺¹, row k), yq), meaned over tasks; θᵏ⁺¹ = θᵏ − αₖ,ₗ gᵏₗ with gᵏ the
    support gradient at θᵏ through row k; the BatchNorm rows held fixed in the inner loop."""
    total = 0.0
    tasks = batch.support_x.shape[0]
    for t in range(tasks):
        theta = {n: p for n, p in params.items() if n not in bn_names}
        fixed = {n: params[n] for n in bn_names}
        for k in range(S):
            loss = F.cross_entropy(conv4({**theta, **fixed}, batch.support_x[t], k), batch.support_y[t])
            grads = torch.autograd.grad(loss, list(theta.values()), create_graph=not first_order)
            theta = {n: p - rates[n][k] * (g.detach() if first_order else g)
                     for (n, p), g in zip(theta.items(), grads, strict=True)}
            query = F.cross_entropy(conv4({**theta, **fixed}, batch.query_x[t], k), batch.query_y[t])
            total = total + weights[k] * query / tasks
    return total


def built(*overrides):
    cfg = load_config(CONFIG, [*SMALL, *overrides])
    algorithm, _ = build_training(cfg, torch.device("cpu"))
    return algorithm.double()


@pytest.mark.parametrize(("engine", "first_order_until"), [("loop", 0), ("vmap", 0), ("loop", 10)])
def test_mamlpp_loss_and_meta_gradient_equal_an_independent_fp64_implementation(engine, first_order_until):
    """At iteration 0: MSL's uniform weights; with DA's default (first order until a third of
    training) the inner gradients are detached, with ``first_order_until=0`` second order."""
    algo = built(f"algorithm.execution.engine={engine}", f"algorithm.first_order_until={first_order_until}")
    model = algo.model
    bn_names, rows = per_step_parameters(model)
    assert rows == S and len(bn_names) == 8
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # distinct rows per step, distinct rates per step and tensor
        for name, p in model.named_parameters():
            if name in bn_names:
                p.copy_((0.7 if name.endswith("weight") else 0.0) + 0.6 * torch.rand(p.shape, generator=g,
                                                                                   dtype=p.dtype))
        for p in algo.inner_lrs.parameters():
            p.copy_(0.2 + 0.4 * torch.rand(p.shape, generator=g, dtype=p.dtype))
    batch = random_batch(tasks=2)
    algo.train()
    algo.begin_step(0)
    out = algo(batch, step=0)
    rates = {n: algo.inner_lrs[n] for n in algo.inner_lrs.names}
    assert set(rates) == {n for n, _ in model.named_parameters()} - bn_names
    assert all(r.shape == (S,) for r in rates.values())
    params = dict(model.named_parameters())
    ref = reference_loss(params, bn_names, rates, batch, importance(S, 0, 3), first_order=first_order_until > 0)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-10, atol=0)
    learned = [p for p in algo.parameters() if p.requires_grad]
    ours = torch.autograd.grad(out["loss"], learned, allow_unused=True, materialize_grads=True)
    theirs = torch.autograd.grad(ref, learned, allow_unused=True, materialize_grads=True)
    for (name, _), a, b in zip(algo.named_parameters(), ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")
    bn_grad = dict(zip([n for n, _ in algo.named_parameters()], ours, strict=True))["model.features.2.1.weight"]
    assert all(bn_grad[k].abs().sum() > 0 for k in range(S))  # every row is learned
    assert not torch.allclose(bn_grad[0], bn_grad[1]) and not torch.allclose(bn_grad[1], bn_grad[2])


def test_evaluation_and_the_diagnostics_run_with_the_rows_of_the_trajectory():
    algo = built("algorithm.first_order_until=0")
    batch = random_batch(tasks=2)
    out = algo(batch, step=0)  # a logging step: AC's gradient at θˢ, the Hessian ratios, the kernel metrics
    assert torch.isfinite(out["loss"]) and out["hess_ratio"].isfinite().all()
    algo.eval()
    with torch.no_grad():
        evaluated = algo(batch)
    assert {"acc", "acc_init", "lin_acc"} <= evaluated.keys()


def test_more_inner_steps_than_rows_and_per_step_weights_under_protonet_are_refused():
    with pytest.raises(ConfigError, match=r"model\.backbone\.bn_steps: per-step BatchNorm weights have 3 rows, but "
                                          r"the inner loop takes 5 steps"):
        built("algorithm.inner_steps_test=5", "algorithm.rates.per_step=false")
    with pytest.raises(ConfigError, match=r"model\.backbone\.per_step_bn: .* protonet has no inner loop"):
        ProtoNet(built().model)


def test_a_term_retracing_more_steps_than_the_per_step_parameters_hold_is_refused_at_build():
    """SHOT's reference walks ref_scale·S steps: per-step rows and rates exist for S only."""
    shot = "losses=[{name: multi_step_ce},{name: shot, ref_scale: 2}]"
    with pytest.raises(ConfigError, match=r"model\.backbone\.bn_steps: per-step BatchNorm weights have 3 rows, but "
                                          r"the inner loop takes 6 steps in the shot term's retraced trajectory"):
        built(shot)
    with pytest.raises(ConfigError, match=r"algorithm\.rates\.per_step: per-step inner rates exist for the 3 "
                                          r"training steps only, but the shot term's retraced trajectory"):
        built(shot, "model.backbone.per_step_bn=false")
    built("losses=[{name: multi_step_ce},{name: shot, ref_scale: 1}]")  # a reference of S steps fits


def test_anil_with_per_step_weights_runs_the_whole_network_at_every_step():
    """The body's output depends on the step: no features computed once per task."""
    model = built().model
    anil = GBML(model, inner_steps=S, adapt="head", execution={"engine": "loop"}, diagnostics={"metrics_period": 0})
    assert not anil.head_only(anil.split_parameters()[0])
    batch = random_batch(tasks=2)
    vmapped = GBML(model, inner_steps=S, adapt="head", execution={"engine": "vmap"}, diagnostics={"metrics_period": 0})
    torch.testing.assert_close(anil(batch)["loss"], vmapped(batch)["loss"], rtol=1e-12, atol=0)
