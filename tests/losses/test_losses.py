import pytest
import torch

from lil_meta.engine.errors import ConfigError
from lil_meta.engine.inner_loop import Trajectory
from lil_meta.losses import build_losses
from lil_meta.losses.base import OuterInputs
from lil_meta.losses.phase import phase_kl


def test_phase_kl_matches_explicit_probabilities_and_is_zero_for_equal_logits():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 7, 5, generator=g, dtype=torch.float64), torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    p, q = a.softmax(-1), b.softmax(-1)
    torch.testing.assert_close(phase_kl(a, b), (p * (p / q).log()).sum(-1).mean(-1))
    assert phase_kl(a, a).abs().max().item() < 1e-15


def test_phase_kl_is_finite_for_extreme_logits():
    a = torch.tensor([[[200.0, -200.0, 0.0]]])
    b = torch.tensor([[[-200.0, 200.0, 0.0]]])
    assert torch.isfinite(phase_kl(a, b)).all() and phase_kl(a, b).item() == pytest.approx(400.0, rel=1e-4)


def test_build_losses_weights_and_errors():
    terms = build_losses([{"name": "cross_entropy"}, {"name": "phase", "weight": 0.1}, {"name": "pseudo_amplitude", "weight": 0.01}])
    assert [(t.key, t.weight) for t in terms] == [("ce", 1.0), ("phase", 0.1), ("amp", 0.01)]
    steps = torch.tensor([[0.5, 0.5], [1.0, 2.0]])  # trajectory lengths 1 and 3
    inputs = OuterInputs(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long),
                         Trajectory(steps, steps.sum(-1), steps))
    assert terms[2](inputs).item() == 2.0
    with pytest.raises(ConfigError, match=r"losses\[1\].name: unknown loss 'phse'; did you mean 'phase'"):
        build_losses([{"name": "cross_entropy"}, {"name": "phse"}])
    with pytest.raises(ConfigError, match="appears twice"):
        build_losses([{"name": "phase"}, {"name": "phase"}])
    with pytest.raises(ConfigError, match=r"losses\[0\].wieght: unknown argument"):
        build_losses([{"name": "phase", "wieght": 1}])


@pytest.mark.parametrize(
    "term, key, bad", [("multi_step_ce", "anneal_iters", 0), ("shot", "ref_scale", 1.5)]
)
def test_a_step_count_that_is_not_a_positive_integer_is_refused_by_name(term, key, bad):
    from lil_meta.losses.multi_step import MultiStepCE
    from lil_meta.losses.shot import SHOTLoss

    cls = {"multi_step_ce": MultiStepCE, "shot": SHOTLoss}[term]
    with pytest.raises(ConfigError, match=f"{term}'s {key} must be a positive integer, got {bad}"):
        cls(**{key: bad})
