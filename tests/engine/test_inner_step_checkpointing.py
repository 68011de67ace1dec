"""algorithm.execution.checkpoint_inner_steps: the memory switch that recomputes each second-order inner
step in the backward pass must give the same meta-gradient (fp64) for every variant whose
outer gradient runs through the inner loop, and must really recompute."""

from __future__ import annotations

import pytest
import torch

from lil_meta.engine.errors import ConfigError
from lil_meta.losses.cross_entropy import CrossEntropy
from lil_meta.losses.phase import PhaseLoss
from lil_meta.losses.pseudo_amplitude import PseudoAmplitudeLoss
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4
from naive_reference import meta_gradient
from tests.engine.test_inner_loop import (
    LR,
    QUERY,
    SHOT,
    STEPS,
    WAY,
    assert_close_rel,
    make_batch,
)

VARIANTS = {
    "maml": {},
    "boil": {"adapt": "body"},  # the head is held fixed inside, yet gets its gradient through it
    "anil": {"adapt": "head"},  # the inner loop reads features that are differentiable in the body
    "anil_no_precompute": {"adapt": "head", "execution": {"precompute_features": False}},
    "meta_sgd": {"rates": {"mode": "per_tensor", "learn": True}},
    "maml_lil": {"losses": [CrossEntropy(), PhaseLoss(weight=0.1), PseudoAmplitudeLoss(weight=0.01)]},
}


def _meta_gradient(checkpointed: bool, variant: dict, channels=1):
    torch.manual_seed(0)
    model = Conv4(num_classes=WAY, in_channels=channels, image_size=16, hidden=6).double()
    execution = {**variant.get("execution", {}), "engine": "loop", "checkpoint_inner_steps": checkpointed}
    settings = {k: v for k, v in variant.items() if k != "execution"}
    algo = GBML(model, inner_lr=LR, inner_steps=STEPS, **settings, execution=execution, diagnostics={"metrics_period": 1})
    out = algo(make_batch(channels=channels))
    out["loss"].backward()
    return model, out["loss"].detach(), [p.grad for p in algo.parameters()]


def test_maml_matches_the_per_task_reference():
    model, loss, grads = _meta_gradient(True, {})
    ref_loss, ref_grads = meta_gradient(model, make_batch(), steps=STEPS, lr=LR, first_order=False)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    assert_close_rel(grads, ref_grads, rtol=1e-8)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_same_meta_gradient_as_without_checkpointing(variant):
    _, loss, grads = _meta_gradient(True, VARIANTS[variant])
    _, ref_loss, ref_grads = _meta_gradient(False, VARIANTS[variant])
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    assert len(grads) == len(ref_grads) and all(g is not None for g in grads)
    assert_close_rel(grads, ref_grads, rtol=1e-9)


@pytest.mark.parametrize("checkpointed", [False, True])
def test_the_support_forward_is_recomputed_in_the_backward_pass(checkpointed):
    torch.manual_seed(0)
    model = Conv4(num_classes=WAY, in_channels=1, image_size=16, hidden=6).double()
    algo = GBML(model, inner_lr=LR, inner_steps=STEPS, execution={"engine": "loop", "checkpoint_inner_steps": checkpointed}, diagnostics={"metrics_period": 0})
    batch = make_batch()
    sizes = []
    model.features[0][0].register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    loss = algo(batch)["loss"]
    forward = sizes.count(WAY * SHOT)
    loss.backward()
    assert forward == STEPS * batch.num_tasks and sizes.count(WAY * QUERY) == batch.num_tasks
    assert sizes.count(WAY * SHOT) - forward == (STEPS * batch.num_tasks if checkpointed else 0)


def test_engine_choice():
    model = Conv4(num_classes=WAY, in_channels=1, image_size=16, hidden=6)
    with pytest.raises(ConfigError, match="algorithm.execution.checkpoint_inner_steps: runs on the per-task loop"):
        GBML(model, execution={"engine": "vmap", "checkpoint_inner_steps": True})
    assert GBML(model, execution={"checkpoint_inner_steps": True}).policy(torch.device("cuda")).engine == "loop"
    assert GBML(model).policy(torch.device("cuda")).engine == "vmap"
