"""ANIL and BOIL against a naive per-task reference (fp64), and what their inner loops touch.

The reference (``tests/naive_reference.py``) adapts only the head (ANIL) or only the body
(BOIL) with explicit ``torch.autograd.grad(create_graph=True)`` steps on the *whole* network
(the body is recomputed at every step), then adds LIL's phase loss over the adapted tensors.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.config import load_config
from lil_meta.engine.inner_loop import InnerLoop, adapt
from lil_meta.losses.cross_entropy import CrossEntropy
from lil_meta.losses.phase import PhaseLoss
from lil_meta.models import build_algorithm
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4
from naive_reference import meta_objective
from tests_helpers import ROOT, tiny_batch

LR, STEPS, W_PHASE = 0.4, 3, 0.1


def in_adapted_set(name, mode):
    return name.startswith("head.") == (mode == "head")


def naive_reference(model, batch, mode, first_order=False):
    """Per task: S explicit steps on the adapted tensors only; CE + w·phase over them."""
    adapted = [n for n, _ in model.named_parameters() if in_adapted_set(n, mode)]
    expected = meta_objective(model, batch, steps=STEPS, rates=LR, adapted=adapted,
                              order="first" if first_order else "second", phase_weight=W_PHASE)
    total = expected.pop("loss")
    return expected, total, torch.autograd.grad(total, list(model.parameters()))


def fp64_setup(seed=0, tasks=2):
    torch.manual_seed(seed)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=4).double()
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in tiny_batch(tasks=tasks, seed=seed)))
    return model, batch


def algorithm(model, mode, engine="loop", first_order=False, precompute_features=True):
    return GBML(model, inner_lr=LR, inner_steps=STEPS, first_order=first_order, adapt=mode,
                losses=[CrossEntropy(), PhaseLoss(weight=W_PHASE)], diagnostics={"metrics_period": 1},
                execution={"engine": engine, "precompute_features": precompute_features})


@pytest.mark.parametrize("engine", ["loop", "vmap"])
@pytest.mark.parametrize("mode", ["head", "body"])
def test_meta_gradient_and_lil_terms_match_naive_reference_fp64(mode, engine):
    model, batch = fp64_setup()
    expected, total, ref_grads = naive_reference(model, batch, mode)
    algo = algorithm(model, mode, engine)
    out = algo(batch)
    torch.testing.assert_close(out["loss"].detach(), total.detach(), rtol=1e-10, atol=0)
    for key, value in expected.items():
        torch.testing.assert_close(out[key], value.detach(), rtol=1e-9, atol=1e-12, msg=key)
    out["loss"].backward()
    for (name, p), ref in zip(model.named_parameters(), ref_grads, strict=True):
        torch.testing.assert_close(p.grad, ref, rtol=1e-7, atol=1e-12, msg=name)
        assert p.grad.abs().sum() > 0, f"{name}: the outer gradient does not reach it"


@pytest.mark.parametrize("mode", ["head", "body"])
def test_first_order_matches_naive_reference_fp64(mode):
    model, batch = fp64_setup(seed=1)
    _, total, ref_grads = naive_reference(model, batch, mode, first_order=True)
    out = algorithm(model, mode, first_order=True)(batch)
    out["loss"].backward()
    torch.testing.assert_close(out["loss"].detach(), total.detach(), rtol=1e-10, atol=0)
    for p, ref in zip(model.parameters(), ref_grads, strict=True):
        torch.testing.assert_close(p.grad, ref, rtol=1e-7, atol=1e-12)


def test_anil_with_and_without_precomputed_features_agree_fp64():
    model, batch = fp64_setup(seed=2)
    results = []
    for precompute in (True, False):
        model.zero_grad(set_to_none=True)
        out = algorithm(model, "head", precompute_features=precompute)(batch)
        out["loss"].backward()
        results.append((out["loss"].detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("mode", ["head", "body"])
def test_frozen_part_is_bit_identical_in_the_inner_loop_and_the_adapted_part_moves(mode):
    """Forward hooks see the tensors the network actually runs with at every call."""
    model, batch = fp64_setup()
    algo = algorithm(model, mode)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = {"body": [], "head": []}
    conv = model.features[0][0]
    hooks = [conv.register_forward_hook(lambda m, i, o: seen["body"].append(m.weight.detach().clone())),
             model.head.register_forward_hook(lambda m, i, o: seen["head"].append(
                 (m.weight.detach().clone(), m.bias.detach().clone())))]
    algo(batch)
    for h in hooks:
        h.remove()
    frozen, moving = ("body", "head") if mode == "head" else ("head", "body")
    first = lambda v: v[0] if isinstance(v, tuple) else v  # noqa: E731
    frozen_ref = theta0["features.0.0.weight"] if frozen == "body" else theta0["head.weight"]
    moving_ref = theta0["head.weight"] if moving == "head" else theta0["features.0.0.weight"]
    assert seen[frozen] and all(torch.equal(first(v), frozen_ref) for v in seen[frozen])
    if frozen == "head":
        assert all(torch.equal(b, theta0["head.bias"]) for _, b in seen["head"])
    assert any((first(v) - moving_ref).abs().max() > 1e-6 for v in seen[moving])
    # the inner loop's θˢ holds exactly A; everything else is passed through untouched
    adapted, rest = algo.split_parameters()
    assert all(in_adapted_set(n, mode) for n in adapted) and not any(in_adapted_set(n, mode) for n in rest)
    final = adapt(model, adapted, rest, batch.support_x[0], batch.support_y[0], steps=STEPS,
                  inner=InnerLoop(algo.inner_update)).params
    assert final.keys() == adapted.keys() and all(rest[n] is p for n, p in model.named_parameters() if n in rest)


def test_anil_runs_the_body_once_per_set_per_task():
    model, batch = fp64_setup()
    calls = []
    model.features.register_forward_hook(lambda *_: calls.append(1))
    algorithm(model, "head")(batch)
    assert len(calls) == 2 * batch.num_tasks  # support and query, not once per inner step
    calls.clear()
    algorithm(model, "head", precompute_features=False)(batch)
    assert len(calls) > 2 * batch.num_tasks


class MatmulShapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.startswith(("mm", "addmm", "bmm")):
            self.shapes.append(tuple(out.shape))
        return out


@pytest.mark.parametrize("mode,head_grads", [("body", 0), ("all", STEPS)])
def test_boil_inner_loop_computes_no_head_gradient(mode, head_grads):
    """``torch.func.grad`` differentiates the adapted dict only: the head's weight-gradient
    matmul (an output of the head weight's shape) never runs for BOIL; MAML runs it per step."""
    torch.manual_seed(0)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=7)
    batch = tiny_batch()
    algo = GBML(model, adapt=mode)
    adapted, frozen = algo.split_parameters()
    with MatmulShapes() as log:
        adapt(model, adapted, frozen, batch.support_x[0], batch.support_y[0], steps=STEPS,
              inner=InnerLoop(algo.inner_update))
    weight = tuple(model.head.weight.shape)
    assert sum(s in (weight, weight[::-1]) for s in log.shapes) == head_grads


@pytest.mark.parametrize("name,adapted", [("anil", "head"), ("boil", "body")])
def test_registered_presets_build_from_their_configs(name, adapted):
    cfg = load_config(ROOT / "configs" / f"{name}_lil_1shot.yaml", ["data.image_size=16", "model.backbone.hidden=4"])
    algo = build_algorithm(cfg)
    assert isinstance(algo, GBML) and algo.adapt == adapted and cfg.data.shot == 1
    assert [t.key for t in algo.losses] == ["ce", "phase"] and algo.losses[1].weight == 0.1
    names = algo.adapted_names()
    assert names and all(in_adapted_set(n, adapted) for n in names)
