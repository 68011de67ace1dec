"""The training step the algorithms offer the trainer (models/algorithms/step.py): the step index
from the caller, chunks, the diagnosis of a non-finite loss, and checkpoints of the older format."""

import torch

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.algorithms.chain import PretrainThen
from lil_meta.models.algorithms.lil_pretrain import LILPretrain
from lil_meta.models.algorithms.step import TrainingStep
from lil_meta.models.backbones.conv4 import Conv4
from tests_helpers import tiny_batch


def net(seed=0):
    torch.manual_seed(seed)
    return Conv4(5, 1, 16, hidden=4)


def test_the_schedule_follows_the_step_it_is_given():
    algo = GBML(net(), inner_lr=0.5, inner_steps=1, metrics_period=3)
    for step, logged in ((7, False), (9, True), (0, True), (4, False)):
        out = algo.forward_backward(tiny_batch(), step)
        assert ("ac" in out) == logged, step
        assert int(algo.steps_done) == step + 1  # recorded, not counted
    assert "ac" not in algo(tiny_batch())  # a direct call is the next step, 5


def test_each_phase_of_a_chain_sees_its_own_step_index():
    model = net()
    main = GBML(model, inner_lr=0.5, inner_steps=1, metrics_period=2)
    chain = PretrainThen(LILPretrain(model, inner_steps=1, momentum=0.5), main, pretrain_iters=3)
    with torch.no_grad():
        model.head.weight.add_(1.0)  # the student moves away from the teacher
    teacher = chain.pretrain.teacher.head.weight.clone()
    out = chain.forward_backward(tiny_batch(), 2)
    assert float(out["phase"]) == 0 and int(chain.pretrain.steps_done) == 3
    assert not torch.equal(teacher, chain.pretrain.teacher.head.weight)  # begin_step ran the EMA
    out = chain.forward_backward(tiny_batch(), 4)  # the main algorithm's step 1: not a logging step
    assert float(out["phase"]) == 1 and "ac" not in out and int(main.steps_done) == 2
    assert "ac" in chain.forward_backward(tiny_batch(), 5)


class Flagged(TrainingStep):
    """loss = mean over tasks of w · x; NaN in the tasks whose x is NaN, flagged per task."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, batch, step=None):
        x = batch.support_x.flatten(1).mean(1)
        return {"loss": (self.w * x).mean(), "task_logits_finite": torch.isfinite(x)}


def test_chunks_report_the_first_bad_chunk_over_the_whole_batch():
    x = torch.arange(8.0).view(8, 1, 1, 1, 1)
    x[5] = x[6] = float("nan")
    batch = TaskBatch(x, torch.zeros(8, 1, dtype=torch.long), x, torch.zeros(8, 1, dtype=torch.long))
    algo = Flagged()
    algo.task_chunk = 3  # chunks 0-2, 3-5, 6-7: the first bad one holds task 5
    out = algo.forward_backward(batch, 0)
    assert out["loss"] != out["loss"]
    assert algo.diagnose(out) == "non-finite query logits in task(s) 5"
    assert algo.diagnose(out, rank=1) == "non-finite query logits in task(s) 13"  # the second share of 16
    assert algo.w.grad == (0 + 1 + 2) / 8  # the finite chunk's share, the others not backpropagated


def test_state_dicts_that_call_the_step_counter_forwards_still_load():
    model = net()
    chain = PretrainThen(LILPretrain(model, inner_steps=1), GBML(model), 2)
    chain(tiny_batch())
    state = {k.replace("pretrain.steps_done", "pretrain.forwards").replace("main.steps_done", "main.forwards"): v
             for k, v in chain.state_dict().items()}
    assert "pretrain.forwards" in state and "main.forwards" in state
    other = net(1)
    restored = PretrainThen(LILPretrain(other, inner_steps=1), GBML(other), 2)
    restored.load_state_dict(state)  # strict
    assert int(restored.pretrain.steps_done) == 1 and int(restored.steps_done) == 1
    plain = GBML(net())
    plain.load_state_dict({("forwards" if k == "steps_done" else k): v for k, v in GBML(net(2)).state_dict().items()})
