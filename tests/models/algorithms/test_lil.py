"""LIL's losses and linearity metrics against a naive, explicit per-task computation (fp64).

The reference (``tests/naive_reference.py``) keeps every θᵏ as one flat vector, takes
gradients with ``torch.autograd.grad``, and evaluates the KL from explicit probabilities.
"""

import pytest
import torch
from torch import nn

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.inner_loop import Trajectory
from lil_meta.losses.cross_entropy import CrossEntropy
from lil_meta.losses.phase import PhaseLoss
from lil_meta.losses.pseudo_amplitude import PseudoAmplitudeLoss
from lil_meta.models.algorithms.base import GBML, linearity_metrics
from lil_meta.models.backbones.conv4 import Conv4
from naive_reference import meta_objective
from tests_helpers import tiny_batch

LR, STEPS, W_PHASE, W_AMP = 0.4, 3, 0.1, 0.1


def lil_algo(model, engine, first_order):
    losses = [CrossEntropy(), PhaseLoss(weight=W_PHASE), PseudoAmplitudeLoss(weight=W_AMP)]
    return GBML(model, inner_lr=LR, inner_steps=STEPS, first_order=first_order, losses=losses, execution={"engine": engine}, diagnostics={"metrics_period": 1})


@pytest.mark.parametrize("engine", ["loop", "vmap"])
@pytest.mark.parametrize("first_order", [False, True])
def test_lil_terms_and_meta_gradient_match_naive_reference(engine, first_order):
    torch.manual_seed(0)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=4).double()
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in tiny_batch(tasks=2)))
    expected = meta_objective(model, batch, steps=STEPS, rates=LR, order="first" if first_order else "second",
                              phase_weight=W_PHASE, amplitude_weight=W_AMP, metrics=True)
    total = expected.pop("loss")
    ref_grads = torch.autograd.grad(total, list(model.parameters()))

    algo = lil_algo(model, engine, first_order)
    out = algo(batch)
    for key, value in expected.items():
        torch.testing.assert_close(out[key], value.detach(), rtol=1e-6, atol=1e-9, msg=key)
    torch.testing.assert_close(out["loss_phase"], W_PHASE * expected["phase_kl"].detach(), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(out["loss_amp"], W_AMP * expected["traj_len"].detach(), rtol=1e-6, atol=1e-12)
    out["loss"].backward()
    for p, ref in zip(model.parameters(), ref_grads, strict=True):
        torch.testing.assert_close(p.grad, ref, rtol=1e-5, atol=1e-10)


class LinearModel(nn.Module):
    def __init__(self, dim=6, way=5):
        super().__init__()
        self.features = nn.Flatten()
        self.head = nn.Linear(dim, way)

    def forward(self, x):
        return self.head(self.features(x))


class LinearObjective(GBML):
    """Inner loss linear in the logits: with a linear model every gᵏ is the same vector."""

    def inner_loss(self, logits, labels):
        return -logits.gather(-1, labels[:, None]).mean()


def test_linear_inner_loop_gives_pc_ac_one_and_zero_phase_loss():
    torch.manual_seed(0)
    model = LinearModel().double()
    g = torch.Generator().manual_seed(1)
    batch = TaskBatch(
        torch.randn(3, 10, 1, 2, 3, generator=g, dtype=torch.float64),
        torch.arange(5).repeat(2).repeat(3, 1),
        torch.randn(3, 15, 1, 2, 3, generator=g, dtype=torch.float64),
        torch.arange(5).repeat(3).repeat(3, 1),
    )
    algo = LinearObjective(model, inner_lr=0.5, inner_steps=4, losses=[CrossEntropy(), PhaseLoss(0.1)],
                           diagnostics={"metrics_period": 1})
    out = algo(batch)
    torch.testing.assert_close(out["pc"], torch.tensor(1.0, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(out["ac"], torch.tensor(1.0, dtype=torch.float64), rtol=1e-12, atol=0)
    assert out["phase_kl"].abs().item() < 1e-12


def test_cross_entropy_inner_loop_is_not_linear():
    """The counterpart: the same linear model under CE curves, so the checks above can fail."""
    torch.manual_seed(0)
    algo = GBML(Conv4(5, 1, 16, hidden=4), inner_lr=0.5, inner_steps=3, losses=[CrossEntropy(), PhaseLoss(0.1)], diagnostics={"metrics_period": 1})
    out = algo(tiny_batch())
    assert out["pc"].item() > 1.0 + 1e-6 and abs(out["ac"].item() - 1.0) > 1e-6 and out["phase_kl"].item() > 0


def test_straight_trajectory_gives_pc_one_and_bent_one_more():
    straight = Trajectory(step_norms=torch.tensor([[1.0, 2.0, 3.0]]), disp_norm=torch.tensor([6.0]),
                          grad_norms=torch.tensor([[2.0, 2.0, 2.0]]), final_grad_norm=torch.tensor([2.0]))
    metrics = linearity_metrics(straight)
    assert metrics["pc"].item() == 1.0 and metrics["ac"].item() == 1.0 and metrics["traj_len"].item() == 6.0
    bent = straight._replace(disp_norm=torch.tensor([3.0]), grad_norms=torch.tensor([[2.0, 1.0, 1.0]]),
                             final_grad_norm=torch.tensor([4.0]))
    metrics = linearity_metrics(bent)
    assert metrics["pc"].item() == 2.0 and metrics["ac"].item() == pytest.approx(1.0)


def test_costly_diagnostics_are_only_computed_every_metrics_period_steps():
    torch.manual_seed(0)
    algo = GBML(Conv4(5, 1, 16, hidden=4), inner_lr=0.5, inner_steps=2, diagnostics={"metrics_period": 3})
    outs = [algo(tiny_batch(), step=step) for step in range(4)]
    assert [("ac" in o, "acc_init" in o, "pc" in o) for o in outs] == [(True, True, True), (False, False, True),
                                                                          (False, False, True), (True, True, True)]
    with torch.no_grad():
        out = algo.eval()(tiny_batch())
    assert "ac" not in out and "acc_init" in out and "pc" in out
