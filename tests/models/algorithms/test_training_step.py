"""The step contract the algorithms offer the trainer (engine.trainer.MetaAlgorithm): the step
index from the caller, ``begin_step`` as the one once-per-step call, chunks and the diagnosis of a
non-finite loss, and checkpoints of the older formats."""

import torch

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.trainer import MetaTrainer
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.algorithms.chain import PretrainThen
from lil_meta.models.algorithms.lil_pretrain import LILPretrain
from lil_meta.models.algorithms.metrics import describe_nonfinite
from lil_meta.models.backbones.conv4 import Conv4
from tests_helpers import tiny_batch


def net(seed=0):
    torch.manual_seed(seed)
    return Conv4(5, 1, 16, hidden=4)


def test_the_schedule_follows_the_step_it_is_given_and_the_forward_keeps_no_state():
    algo = GBML(net(), inner_lr=0.5, inner_steps=1, diagnostics={"metrics_period": 3})
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    for step, logged in ((7, False), (9, True), (0, True), (4, False)):
        assert ("ac" in algo(tiny_batch(), step=step)) == logged, step
    assert "ac" in algo(tiny_batch())  # a direct call is step 0, a logging step
    after = algo.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_each_phase_of_a_chain_sees_its_own_step_index_and_begin_step_runs_the_ema():
    model = net()
    main = GBML(model, inner_lr=0.5, inner_steps=1, diagnostics={"metrics_period": 2})
    chain = PretrainThen(LILPretrain(model, inner_steps=1, momentum=0.5), main, pretrain_iters=3)
    with torch.no_grad():
        model.head.weight.add_(1.0)  # the student moves away from the teacher
    teacher = chain.pretrain.losses[0].teacher
    before = teacher.head.weight.clone()
    chain(tiny_batch(), step=2)
    assert torch.equal(before, teacher.head.weight)  # the forward alone leaves the teacher
    chain.begin_step(2)
    assert not torch.equal(before, teacher.head.weight)  # begin_step ran the EMA
    moved = teacher.head.weight.clone()
    chain.begin_step(4)  # a step of the main algorithm: no EMA
    assert torch.equal(moved, teacher.head.weight)
    assert float(chain(tiny_batch(), step=2)["phase"]) == 0
    out = chain(tiny_batch(), step=4)  # the main algorithm's step 1: not a logging step
    assert float(out["phase"]) == 1 and "ac" not in out
    assert "ac" in chain(tiny_batch(), step=5)


class Flagged(torch.nn.Module):
    """loss = mean over tasks of w · x; NaN in the tasks whose x is NaN, flagged per task."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def begin_step(self, step):
        pass

    def diagnose(self, out, rank=0):
        return describe_nonfinite(out, rank=rank)

    def forward(self, batch, step=0):
        x = batch.support_x.flatten(1).mean(1)
        return {"loss": (self.w * x).mean(), "task_logits_finite": torch.isfinite(x)}


def test_chunks_report_every_bad_task_over_the_whole_batch():
    x = torch.arange(8.0).view(8, 1, 1, 1, 1)
    x[5] = x[6] = float("nan")
    labels = torch.zeros(8, 1, dtype=torch.long)
    batch = TaskBatch(x, labels, x, labels)
    algo = Flagged()
    trainer = MetaTrainer(algo, None, torch.optim.SGD(algo.parameters(), lr=0.1), task_chunk=3)
    out = trainer._forward_backward(batch)  # chunks 0-2, 3-5, 6-7: tasks 5 and 6 are bad
    assert out["loss"] != out["loss"] and out["task_logits_finite"].shape == (8,)
    assert algo.diagnose(out) == "non-finite query logits in task(s) 5, 6"
    assert algo.diagnose(out, rank=1) == "non-finite query logits in task(s) 13, 14"  # the second share of 16


def test_state_dicts_of_earlier_versions_still_load():
    """Earlier checkpoints hold a step counter (``steps_done``, before that ``forwards``) and
    LIL pretraining's teacher on the algorithm itself (``pretrain.teacher.*``)."""
    model = net()
    chain = PretrainThen(LILPretrain(model, inner_steps=1), GBML(model), 2)
    state = {k.replace("pretrain.losses.0.teacher.", "pretrain.teacher."): v for k, v in chain.state_dict().items()}
    state.update({"steps_done": torch.tensor(3), "pretrain.forwards": torch.tensor(1),
                  "main.steps_done": torch.tensor(1)})
    other = net(1)
    restored = PretrainThen(LILPretrain(other, inner_steps=1), GBML(other), 2)
    restored.load_state_dict(state)  # strict
    for key, value in chain.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    plain = GBML(net())
    plain.load_state_dict({**GBML(net(2)).state_dict(), "forwards": torch.tensor(2)})
