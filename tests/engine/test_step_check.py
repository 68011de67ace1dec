"""The finiteness check kept on the device (engine/step_check.py): with a fused optimizer a
non-finite step changes no parameter and no moment, the host reads the verdict one step late,
and skip and stop keep their meaning — the same weights, skips and saved state as the check
that reads the flag before the update."""

from __future__ import annotations

import copy

import pytest
import torch

from lil_meta.engine.trainer import MetaTrainer, NumericalFault


class Bumpy(torch.nn.Module):
    """loss = Σ (w − batch)², NaN on chosen calls (a per-task flag says which task)."""

    def __init__(self, nan_at=()):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5))
        self.calls, self.nan_at = 0, set(nan_at)

    def begin_step(self, step):
        pass

    def diagnose(self, out, rank=0):
        return "task 0's logits"

    def forward(self, batch, step=0):
        i, self.calls = self.calls, self.calls + 1
        loss = (self.w - batch.value).square().sum()
        if i in self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss, "acc": torch.tensor(0.5), "task_logits_finite": torch.tensor([i not in self.nan_at])}


class Batch:
    num_tasks = 1

    def __init__(self, value):
        self.value = value

    def to(self, device, non_blocking=False):
        return self


class Counter:
    def __init__(self):
        self.n = 0

    def next_batch(self):
        self.n += 1
        return Batch(torch.full((5,), 0.1 * self.n))

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def trainer_for(nan_at, on_device: bool, **kwargs) -> MetaTrainer:
    algo = Bumpy(nan_at)
    optimizer = torch.optim.Adam(algo.parameters(), lr=0.05, fused=True)
    trainer = MetaTrainer(algo, Counter(), optimizer, **kwargs)
    assert trainer.checks_on_device  # a fused Adam skips on a device flag
    trainer.checks_on_device = on_device
    return trainer


def test_a_fused_optimizer_puts_the_check_on_the_device_and_others_do_not():
    algo = Bumpy()
    assert not MetaTrainer(algo, Counter(), torch.optim.Adam(algo.parameters())).checks_on_device
    assert not MetaTrainer(algo, Counter(), torch.optim.AdamW(algo.parameters())).checks_on_device
    assert MetaTrainer(algo, Counter(), torch.optim.SGD(algo.parameters(), lr=0.1, fused=True)).checks_on_device


def test_skips_read_one_step_late_give_the_same_training():
    runs = {}
    for on_device in (False, True):
        trainer = trainer_for({2, 5}, on_device, on_nonfinite="skip", max_skips=3)
        trainer.train(0, 8)
        runs[on_device] = trainer
    host, device = runs[False], runs[True]
    assert host.skipped == device.skipped == 2
    assert torch.equal(host.algorithm.w, device.algorithm.w)
    state_h, state_d = (t.optimizer.state[t.algorithm.w] for t in (host, device))
    assert torch.equal(state_h["exp_avg"], state_d["exp_avg"])
    assert float(state_h["step"]) == float(state_d["step"]) == 6  # skipped steps are not counted
    # a skipped step leaves no metric behind, whenever it is read
    assert [it for it, _ in device.storage.history("loss")] == [0, 1, 3, 4, 6, 7]
    assert [it for it, _ in host.storage.history("loss")] == [0, 1, 3, 4, 6, 7]


@pytest.mark.parametrize("on_device", [False, True])
@pytest.mark.parametrize("bad", [3, 5])  # mid-run, and the last iteration (read after the loop)
def test_a_stop_leaves_the_weights_and_moments_from_before_the_bad_step(bad, on_device):
    trainer = trainer_for({bad}, on_device)
    snapshots = []
    step = trainer.run_step

    def snapshot_then_step():
        snapshots.append((trainer.algorithm.w.detach().clone(),
                          copy.deepcopy(trainer.optimizer.state_dict()["state"])))
        step()

    trainer.run_step = snapshot_then_step
    with pytest.raises(NumericalFault, match=rf"iteration {bad}: non-finite loss \(loss=nan\): task 0's logits; "
                                             r"training stopped") as info:
        trainer.train(0, 6)
    weights, moments = snapshots[bad]
    assert torch.equal(trainer.algorithm.w.detach(), weights)  # the bad update changed nothing
    assert torch.equal(info.value.state["model"]["w"], weights)
    saved = info.value.state["optimizer"]["state"][0]
    assert torch.equal(saved["exp_avg"], moments[0]["exp_avg"]) and float(saved["step"]) == float(moments[0]["step"])
    assert info.value.state["iteration"] == bad and info.value.state["sampler"] == {"n": bad}
