"""LIL pretraining (docs/design.md §1.1, paper appendix E): linearity in the inner loop, no query labels.

A BYOL-style teacher/student pair over one network (paper Fig. 5):

- the teacher θₜ, an exponential moving average of the student (momentum 0.999), adapts S steps
  on the support set and predicts ``P = s(f(xq|θₜˢ))``; its trajectory length is Tₜ = Σₖ dₖ;
- the student takes one straight step of that length along its own first inner step,
  ``θ̂ = θ⁰ + Tₜ · Δ⁰/‖Δ⁰‖`` with Δ⁰ = θ¹ − θ⁰ (eq. 7–8, read as in the phase loss; for one scalar
  rate this is ``θ⁰ − Tₜ · g⁰/‖g⁰‖``);
- loss = ``weight · KL(P ‖ s(f(xq|θ̂)))``, mean over query examples and tasks (eq. 7). The
  teacher gets no gradient; it follows the student by EMA.

Support labels drive the inner loops, as in every GBML method; query labels never enter the loss
(the logged ``acc`` — the teacher's adapted query accuracy — is a diagnostic only). The student's
gradient flows through θ⁰ and, unless ``first_order``, through g⁰ (one Hessian-vector product,
the cost of one-step MAML: the paper's "only calculates the student's gradient").

The EMA update runs at the start of each training step (:meth:`LILPretrain.begin_step`), before
the loss: with the teacher initialised to the student, that is the same sequence as BYOL's update
after each optimizer step, and it keeps the trainer unaware of teachers. The teacher is part of the ``state_dict``, so a
resumed run continues exactly. In ``eval()`` mode this is plain :class:`GBML` evaluation of the
student θ⁰ (adapt, then query accuracy).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.inner_loop import adapt, logits_at, map_tasks, straight_step
from lil_meta.engine.registry import ALGORITHMS
from lil_meta.losses.phase import phase_kl
from lil_meta.models.algorithms.base import GBML


@ALGORITHMS.register("lil_pretrain")
class LILPretrain(GBML):
    """GBML whose training step is LIL pretraining (teacher S steps, student one straight step).

    Args:
        model: the student network θ (the meta-parameters being pretrained).
        momentum: EMA momentum of the teacher (BYOL; the paper uses 0.999).
        weight: factor of the KL term (the paper's 0.1).
        **kwargs: :class:`GBML` arguments; ``inner_steps`` is the teacher's S (paper: 3).
    """

    def __init__(self, model: nn.Module, momentum: float = 0.999, weight: float = 0.1, **kwargs):
        super().__init__(model, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"algorithm.momentum: expected 0 <= momentum < 1, got {momentum}")
        if self.inner_steps < 1:
            raise ConfigError("algorithm.inner_steps: LIL pretraining needs >= 1 teacher step")
        self.momentum = float(momentum)
        self.weight = float(weight)
        self.teacher = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update_teacher(self) -> None:
        """θₜ ← m·θₜ + (1 − m)·θ over parameters; buffers are copied."""
        for t, s in zip(self.teacher.parameters(), self.model.parameters(), strict=True):
            t.lerp_(s, 1.0 - self.momentum)
        for t, s in zip(self.teacher.buffers(), self.model.buffers(), strict=True):
            t.copy_(s)

    def pretrain_task(self, adapted, frozen, t_adapted, t_frozen, support_x, support_y, query_x):
        """One task: the teacher's adapted prediction and the student's straight-step logits."""
        with torch.no_grad():
            t_final, t_record = adapt(self.teacher, t_adapted, t_frozen, support_x, support_y,
                                      self.inner_steps, self.inner_update, True, False, self.inner_loss)
            teacher_logits = logits_at(self.teacher, t_final, t_frozen, query_x)
            traj_len = t_record["step_norms"].sum()
        _, record = adapt(self.model, adapted, frozen, support_x, support_y, 1, self.inner_update,
                          self.first_order, False, self.inner_loss, self.checkpoint_inner_steps)
        straight = straight_step(adapted, record["d0"], traj_len, record["step_norms"][0])
        return {
            "teacher_logits": teacher_logits,
            "straight_logits": logits_at(self.model, straight, frozen, query_x),
            "traj_len": traj_len,
        }

    def begin_step(self, step: int | None = None) -> int:
        """A training step begins: the teacher's EMA update, once however the step is chunked."""
        step = super().begin_step(step)
        self.update_teacher()
        return step

    def forward(self, batch: TaskBatch, step: int | None = None) -> dict[str, torch.Tensor]:
        if not self.training:
            return super().forward(batch)
        batch = self.prepared(batch)
        if step is None:
            self.begin_step()
        per_task = map_tasks(
            self.pretrain_task, (*self.split_parameters(), *self.split_parameters(self.teacher)),
            (batch.support_x, batch.support_y, batch.query_x),
            self.resolved_engine(batch.support_x.device),
        )
        kl = phase_kl(per_task["teacher_logits"], per_task["straight_logits"]).mean()
        loss = self.weight * kl
        teacher_acc = (per_task["teacher_logits"].argmax(-1) == batch.query_y).float().mean()
        return {
            "loss": loss,
            "loss_lil_pretrain": loss.detach(),
            "phase_kl": kl.detach(),
            "traj_len": per_task["traj_len"].mean(),
            "acc": teacher_acc,
        }
