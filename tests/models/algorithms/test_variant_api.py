"""The variant API around GBML: out-of-tree registration through ``extra_modules``, outer-loss
terms (their metrics, their requests for more than the inner loop computed), and the ``adapt``
option's checks."""

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.config import load_config
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import ALGORITHMS
from lil_meta.losses import OuterLoss
from lil_meta.losses.cross_entropy import CrossEntropy
from lil_meta.models import build_algorithm
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4
from tests_helpers import ROOT, tiny_batch

USER_MODULE = '''
from lil_meta.engine.registry import ALGORITHMS
from lil_meta.losses import OuterLoss
from lil_meta.losses.cross_entropy import CrossEntropy
from lil_meta.models.algorithms.base import GBML


@ALGORITHMS.register("{name}")
class HeadAndLastBlock(GBML):
    def adapted_names(self):
        return [n for n in super().adapted_names() if n.startswith(("features.3.", "head."))]
'''


def test_extra_modules_registers_an_out_of_tree_variant(tmp_path, monkeypatch):
    name = "user_variant_for_test"
    (tmp_path / f"{name}.py").write_text(USER_MODULE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = [f"extra_modules=[{name}]", f"algorithm.name={name}", "data.image_size=16", "model.backbone.hidden=3"]
    cfg = load_config(ROOT / "configs" / "maml_5shot.yaml", overrides)
    assert name not in ALGORITHMS
    try:
        algo = build_algorithm(cfg)
        assert type(algo).__name__ == "HeadAndLastBlock" and name in ALGORITHMS
        assert algo.adapted_names() == ["features.3.0.weight", "features.3.1.weight", "features.3.1.bias",
                                        "head.weight", "head.bias"]
        out = algo(tiny_batch())
        out["loss"].backward()
        assert all(p.grad is not None for p in algo.parameters())
    finally:
        ALGORITHMS._entries.pop(name, None)
        sys.modules.pop(name, None)


class Shrink(OuterLoss):
    """A term from the trajectory alone, reporting a metric of its own."""

    key = "shrink"

    def value(self, inputs):
        return inputs.trajectory.length.mean()

    def report(self, inputs):
        return {"shrink_max": inputs.trajectory.length.max()}


class Retraced(OuterLoss):
    """A term that asks for another trajectory: twice the steps at half the rate, no graph."""

    key = "retraced"

    def per_task(self, task):
        run = task.retrace(steps=2 * task.steps, lr_scale=0.5, graph=False)
        return {"ref": task.logits_at(run.params)}

    def value(self, inputs):
        self.seen = inputs.extras["ref"]  # for the test to look at
        return (inputs.logits - inputs.extras["ref"]).square().mean()


def test_a_term_is_added_to_the_loss_and_reports_its_own_metrics():
    torch.manual_seed(0)
    model = Conv4(5, 1, 16, hidden=3)
    plain = GBML(model, inner_steps=2)
    shrink = GBML(model, inner_steps=2, losses=[CrossEntropy(), Shrink(weight=0.5)])
    batch = tiny_batch()
    out, base = shrink(batch), plain(batch)
    torch.testing.assert_close(out["loss_shrink"], 0.5 * out["traj_len"])
    torch.testing.assert_close(out["loss"], base["loss"] + out["loss_shrink"])
    assert out["shrink_max"] >= out["traj_len"] and out["loss"].requires_grad


def hand_adapted_logits(model, batch, task, steps, rate):
    """Query logits after ``steps`` plain steps at ``rate`` from the model's own θ⁰, one task."""
    theta = {n: p.detach() for n, p in model.named_parameters()}
    for _ in range(steps):
        theta = {n: p.requires_grad_() for n, p in theta.items()}
        logits = torch.func.functional_call(model, theta, (batch.support_x[task],))
        grads = torch.autograd.grad(F.cross_entropy(logits, batch.support_y[task]), list(theta.values()))
        theta = {n: (p - rate * g).detach() for (n, p), g in zip(theta.items(), grads, strict=True)}
    return torch.func.functional_call(model, theta, (batch.query_x[task],)).detach()


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_a_term_may_ask_for_another_trajectory(engine):
    torch.manual_seed(0)
    model = Conv4(5, 1, 16, hidden=3).double()
    algo = GBML(model, inner_lr=0.5, inner_steps=1, losses=[CrossEntropy(), Retraced()], execution={"engine": engine})
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in tiny_batch()))
    out = algo(batch)
    tasks = range(batch.num_tasks)
    reference = torch.stack([hand_adapted_logits(model, batch, i, 2, 0.25) for i in tasks])
    adapted = torch.stack([hand_adapted_logits(model, batch, i, 1, 0.5) for i in tasks])
    seen = algo.losses[1].seen
    torch.testing.assert_close(seen, reference, rtol=1e-10, atol=1e-12)
    assert not seen.requires_grad  # graph=False: a constant target
    torch.testing.assert_close(out["loss_retraced"], (adapted - reference).square().mean(), rtol=1e-10, atol=1e-12)


def test_adapt_option_is_checked():
    with pytest.raises(ConfigError, match="algorithm.adapt: expected one of all, head, body; got 'neck'"):
        GBML(Conv4(5, 1, 16, hidden=3), adapt="neck")
    headless = nn.Sequential(nn.Flatten(), nn.Linear(256, 5))
    with pytest.raises(ConfigError, match=r"model\.backbone: the network \(Sequential\) needs a \.head that is an "
                                          r"nn\.Linear .*; it has none"):
        GBML(headless, adapt="head")
