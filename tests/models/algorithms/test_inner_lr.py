"""Inner learning rates: scalar / per-tensor / per-element, fixed or meta-learned (Meta-SGD).

The meta-gradient with respect to learned rates is checked against a naive fp64 per-task loop
(``tests/naive_reference.py``: explicit rate tensors, ``torch.autograd.grad(create_graph=True)``)
and by central differences.
"""

import pytest
import torch

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.config import load_config
from lil_meta.engine.defaults import build_optimizer
from lil_meta.engine.errors import ConfigError
from lil_meta.models import build_algorithm
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4
from naive_reference import meta_objective
from tests_helpers import ROOT, tiny_batch

STEPS, LR = 2, 0.3


def setup(mode, learn=True, adapt="all", seed=0, engine="loop"):
    torch.manual_seed(seed)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=3).double()
    algo = GBML(model, inner_lr=LR, inner_steps=STEPS, adapt=adapt, execution={"engine": engine}, rates={"mode": mode, "learn": learn}, diagnostics={"metrics_period": 0})
    with torch.no_grad():  # distinct rates, so a mix-up of names or broadcasting shows
        for i, rate in enumerate(algo.inner_lrs.parameters()):
            rate.mul_(1 + 0.1 * i).add_(0.05 * torch.rand_like(rate))
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in tiny_batch(tasks=2, seed=seed)))
    return algo, batch


def naive_reference(algo, batch):
    """Per task, θᵏ⁺¹ = θᵏ − α ⊙ gᵏ with the rates as explicit tensors; returns the outer loss
    and its gradients with respect to the rates and to θ⁰."""
    names = algo.adapted_names()
    rates = {n: algo.inner_lrs[n] for n in names}
    leaves = list(dict.fromkeys(r for r in rates.values() if isinstance(r, torch.Tensor)))
    total = meta_objective(algo.model, batch, steps=STEPS, rates=rates, adapted=names)["loss"]
    return total, torch.autograd.grad(total, leaves + list(algo.model.parameters()))


@pytest.mark.parametrize("mode,adapt,engine", [
    ("scalar", "all", "loop"), ("per_tensor", "all", "loop"), ("per_element", "all", "loop"),
    ("per_element", "all", "vmap"), ("per_element", "head", "loop"), ("per_tensor", "body", "vmap"),
])
def test_meta_gradient_of_learned_rates_matches_naive_reference_fp64(mode, adapt, engine):
    algo, batch = setup(mode, adapt=adapt, engine=engine)
    rates = list(algo.inner_lrs.parameters())
    expected = {"scalar": 1, "per_tensor": len(algo.adapted_names()), "per_element": len(algo.adapted_names())}[mode]
    assert len(rates) == expected
    if mode == "per_element":
        assert [r.shape for r in rates] == [dict(algo.model.named_parameters())[n].shape for n in algo.adapted_names()]
    total, ref_grads = naive_reference(algo, batch)
    out = algo(batch)
    out["loss"].backward()
    torch.testing.assert_close(out["loss"].detach(), total.detach(), rtol=1e-11, atol=0)
    grads = [r.grad for r in rates] + [p.grad for p in algo.model.parameters()]
    for got, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-13)
    assert all(r.grad.abs().sum() > 0 for r in rates)


def test_rate_gradient_matches_finite_differences_fp64():
    algo, batch = setup("per_tensor", seed=1)
    rates = list(algo.inner_lrs.parameters())
    algo(batch)["loss"].backward()
    eps = 1e-6
    for _ in range(3):
        direction = [torch.randn_like(r) for r in rates]
        with torch.no_grad():
            values = []
            for sign in (1, -2, 1):
                for r, v in zip(rates, direction, strict=True):
                    r.add_(sign * eps * v)
                values.append(algo(batch)["loss"].item())
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = sum((r.grad * v).sum() for r, v in zip(rates, direction, strict=True)).item()
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic))


def test_fixed_rates_are_buffers_and_start_at_inner_lr():
    algo, batch = setup("per_tensor", learn=False)
    assert not list(algo.inner_lrs.parameters())
    buffers = dict(algo.inner_lrs.named_buffers())
    assert len(buffers) == len(algo.adapted_names()) and all(b.item() == LR for b in buffers.values())
    reference = GBML(algo.model, inner_lr=LR, inner_steps=STEPS, execution={"engine": "loop"}, diagnostics={"metrics_period": 0})
    torch.testing.assert_close(algo(batch)["loss"], reference(batch)["loss"], rtol=1e-12, atol=0)
    assert "inner_lrs.features:0:0:weight" in algo.state_dict()


def test_config_switch_learns_rates_with_the_optimizer_and_checkpoints_them():
    overrides = ["data.image_size=16", "model.backbone.hidden=3", "algorithm.rates.mode=per_element",
                 "algorithm.rates.learn=true", "algorithm.execution.engine=loop"]
    cfg = load_config(ROOT / "configs" / "maml_5shot.yaml", overrides)
    algo = build_algorithm(cfg)
    rates = list(algo.inner_lrs.parameters())
    assert len(rates) == len(list(algo.model.parameters())) and all(torch.all(r == 0.5) for r in rates)
    optimizer = build_optimizer(cfg, algo)
    assert {id(p) for p in optimizer.param_groups[0]["params"]} >= {id(r) for r in rates}
    algo(tiny_batch())["loss"].backward()
    optimizer.step()
    assert not all(torch.all(r == 0.5) for r in rates)
    state = algo.state_dict()
    assert sum(k.startswith("inner_lrs.") for k in state) == len(rates)
    fresh = build_algorithm(cfg)
    fresh.load_state_dict(state)
    for a, b in zip(fresh.inner_lrs.parameters(), rates, strict=True):
        assert torch.equal(a, b)


def test_bad_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="algorithm.rates.mode: expected one of scalar, per_tensor, per_element"):
        GBML(Conv4(5, 1, 16, hidden=3), rates={"mode": "per_layer"})
