"""evaluate / mean_ci95 against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lil_meta.engine.evaluation import evaluate, mean_ci95


def test_mean_ci95_hand_computed():
    values = [60.0, 80.0, 70.0, 90.0]
    mean = 75.0
    std = math.sqrt(((15**2) + (5**2) + (5**2) + (15**2)) / 3)  # sample std, n - 1
    m, ci = mean_ci95(values)
    assert m == pytest.approx(mean)
    assert ci == pytest.approx(1.96 * std / 2.0)
    assert mean_ci95(torch.tensor([50.0, 50.0])) == (50.0, 0.0)
    assert math.isnan(mean_ci95([42.0])[1])
    with pytest.raises(ValueError):
        mean_ci95([])


class FixedAccuracy(nn.Module):
    """task_acc of task i is accs[i]; records the mode and grad state it ran in."""

    def __init__(self, accs):
        super().__init__()
        self.accs = torch.tensor(accs)
        self.seen = 0
        self.modes = []
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, batch):
        n = batch.num_tasks
        self.modes.append((self.training, torch.is_grad_enabled()))
        torch.rand(5)  # consumes global RNG: evaluate must restore it
        acc = self.accs[self.seen : self.seen + n]
        self.seen += n
        return {"loss": self.w * 0, "task_acc": acc}


def test_evaluate_percent_ci_mode_and_rng(tiny):
    accs = [0.2, 0.4, 0.6, 0.8, 1.0, 0.6, 0.6]
    algo = FixedAccuracy(accs)
    algo.train()
    torch.manual_seed(3)
    expected_next = torch.rand(4)
    torch.manual_seed(3)
    result = evaluate(algo, tiny.TaskList(num_tasks=7), batch_size=3, device="cpu")
    assert torch.equal(torch.rand(4), expected_next), "evaluation must not shift the global RNG"
    mean, ci = mean_ci95([a * 100 for a in accs])
    assert result["n"] == 7
    assert result["acc"] == pytest.approx(mean) and result["acc"] == pytest.approx(60.0)
    assert result["ci95"] == pytest.approx(ci)
    assert algo.modes == [(False, False)] * 3  # batches of 3, 3, 1; eval mode, no grad
    assert algo.training, "the previous mode is restored"
    algo.eval()
    algo.seen = 0
    evaluate(algo, tiny.TaskList(num_tasks=7), batch_size=7, device="cpu")
    assert not algo.training
