"""LIL pretraining's term (docs/design.md §1.1, paper appendix E): a teacher's adapted prediction
as the target of the student's straight step, no query labels.

Per task the teacher θₜ (an EMA of the student, BYOL style) adapts S steps from its own tensors
on the support set, without graph, and gives P = s(f(xq|θₜˢ)) and its trajectory length Tₜ;
the student's straight step θ̂ = θ⁰ + Tₜ · Δ⁰/‖Δ⁰‖ runs along the student's own first inner
step Δ⁰ (eq. 7–8, read as in the phase term). The value is KL(P ‖ s(f(xq|θ̂))), mean over query
examples and tasks; the gradient reaches the student only.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lil_meta.engine.adapted_task import AdaptedTask
from lil_meta.losses.base import OuterInputs, OuterLoss, task_accuracy
from lil_meta.losses.phase import phase_kl


class LILPretrainLoss(OuterLoss):
    """The teacher/student KL of LIL pretraining over the network ``model`` (the student).

    Args:
        model: the student network; the teacher starts as a copy of it.
        teacher_steps: the teacher's inner steps S (the paper's 3).
        momentum: the teacher's EMA momentum (the paper's 0.999).
        weight: the term's factor (the paper's 0.1).

    Reports ``phase_kl`` (the unweighted KL), ``teacher_acc`` (the teacher's adapted query
    accuracy: a diagnostic, no label enters the loss) and ``teacher_traj_len`` (Tₜ).
    """

    key = "lil_pretrain"
    metric = "phase_kl"

    def __init__(self, model: nn.Module, teacher_steps: int = 3, momentum: float = 0.999, weight: float = 0.1):
        super().__init__(weight)
        self.student = (model,)  # the algorithm's network, held without registering it twice
        self.teacher = copy.deepcopy(model).requires_grad_(False)
        self.teacher_steps, self.momentum = int(teacher_steps), float(momentum)

    def steps_walked(self, inner_steps: int) -> int:
        return max(inner_steps, self.teacher_steps)

    @torch.no_grad()
    def begin_step(self, step: int) -> None:
        """θₜ ← m·θₜ + (1 − m)·θ over parameters; buffers are copied. Once per training step,
        before its forward: with the teacher initialised to the student, the sequence of BYOL's
        update after each optimizer step."""
        (student,) = self.student
        for t, s in zip(self.teacher.parameters(), student.parameters(), strict=True):
            t.lerp_(s, 1.0 - self.momentum)
        for t, s in zip(self.teacher.buffers(), student.buffers(), strict=True):
            t.copy_(s)

    def per_task(self, task: AdaptedTask) -> dict[str, torch.Tensor]:
        teacher = dict(self.teacher.named_parameters())
        start = {name: teacher[name] for name in task.theta0}
        frozen = {**dict(self.teacher.named_buffers()),
                  **{name: t for name, t in teacher.items() if name not in start}}
        with torch.no_grad():
            run = task.retrace(start=start, frozen=frozen, steps=self.teacher_steps, graph=False, first_order=True)
            teacher_logits = task.logits_at(run.params, frozen)
        length = run.trajectory.length
        return {"teacher_logits": teacher_logits, "teacher_traj_len": length,
                "straight_logits": task.logits_at(task.straight_point(length))}

    def value(self, inputs: OuterInputs) -> torch.Tensor:
        return phase_kl(inputs.extras["teacher_logits"], inputs.extras["straight_logits"]).mean()

    def report(self, inputs: OuterInputs) -> dict[str, torch.Tensor]:
        extras = inputs.extras
        return {"teacher_acc": task_accuracy(extras["teacher_logits"], inputs.query_y).mean(),
                "teacher_traj_len": extras["teacher_traj_len"].mean()}
