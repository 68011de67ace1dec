"""The training step an algorithm offers the trainer: chunks of tasks, the step index, diagnosis.

:class:`engine.trainer.MetaTrainer` knows nothing of tasks. Each iteration it zeroes the
gradients and calls ``out = algorithm.forward_backward(batch, step)``, with ``step`` its
iteration index; when ``out["loss"]`` is not finite it appends ``algorithm.diagnose(out, rank)``
to its message. (An algorithm without these methods is run as ``out = algorithm(batch)``,
``out["loss"].backward()``.) :class:`TrainingStep` implements them for an algorithm whose
``forward(batch, step)`` returns the loss/metric dict of a :class:`~datasets.TaskBatch`:

- **the step.** :meth:`TrainingStep.begin_step` runs once per training step, before the step's
  forward passes: the place for once-a-step work (LIL pretraining's teacher EMA, the phase of
  :class:`~models.algorithms.chain.PretrainThen`). ``forward`` then gets the step index, which
  sets the schedule of the costly diagnostics (``GBML.metrics_period``). The ``steps_done``
  buffer records how many steps have begun, so a direct ``algorithm(batch)`` in training mode
  — a step of its own, begun by ``forward`` — continues the schedule, also after a
  ``state_dict`` round trip.
- **chunks.** With ``task_chunk = k > 0`` (``solver.task_chunk``, set by
  :func:`models.build_algorithm`) forward and backward run k tasks at a time: each chunk's loss
  is weighted by its share of the tasks before its backward, so the accumulated gradient and
  the weighted means of the scalars equal those of one pass over the whole batch (every term is
  a mean over tasks) while only one chunk's graph is alive at a time.
- **diagnosis.** A chunk whose loss is not finite is not backpropagated; its per-task flags
  (:attr:`TrainingStep.nonfinite_flags`) are returned, and :meth:`TrainingStep.diagnose` names
  the tasks where the NaN/inf came from.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["TrainingStep"]


def _is_scalar(value: Any) -> bool:
    return (isinstance(value, torch.Tensor) and value.dim() == 0) or isinstance(value, (int, float))


def _float(value: torch.Tensor | float) -> float:
    return float(value.detach().item() if isinstance(value, torch.Tensor) else value)


def _loss(out: dict) -> torch.Tensor:
    if "loss" not in out:
        raise KeyError("algorithm output has no 0-dim 'loss' entry to minimise")
    return out["loss"]


class TrainingStep(nn.Module):
    """Base of the algorithms: the training-step contract of the module doc.

    Subclasses implement ``forward(batch, step=None)``; in training mode with ``step=None`` it
    begins a step itself (``step = self.begin_step()``).
    """

    task_chunk: int = 0  # tasks per forward/backward in a training step; 0 = the whole batch
    # per-task boolean outputs that say where a non-finite loss came from, and what it means
    nonfinite_flags: tuple[tuple[str, str], ...] = (
        ("task_inner_finite", "the inner loop diverged (non-finite trajectory)"),
        ("task_logits_finite", "non-finite query logits"),
    )

    def __init__(self) -> None:
        super().__init__()
        # training steps begun; a buffer so that a resumed direct caller keeps the schedule
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def begin_step(self, step: int | None = None) -> int:
        """Start training step ``step`` (default: the next one); returns its index."""
        if step is None:
            step = int(self.steps_done)
        self.steps_done.fill_(step + 1)
        return step

    def forward_backward(self, batch, step: int) -> dict[str, Any]:
        """Step ``step`` on ``batch``: forward, backward into ``.grad`` (not when the loss is not
        finite), and the output. With chunks, the output holds the weighted means of the scalars
        and, for the first chunk whose loss is not finite, its flags over the whole batch."""
        self.begin_step(step)
        total = batch.num_tasks
        size = self.task_chunk if 0 < self.task_chunk < total else total
        if size == total:
            out = self(batch, step=step)
            if math.isfinite(float(_loss(out).detach())):
                out["loss"].backward()
            return out
        merged: dict[str, Any] = {}
        bad: tuple[dict, int] | None = None
        for lo in range(0, total, size):
            part = type(batch)(*(t[lo:lo + size] for t in batch))
            out = self(part, step=step)
            weight = part.num_tasks / total
            for key, value in out.items():
                if _is_scalar(value):
                    merged[key] = merged.get(key, 0.0) + weight * _float(value)
            if math.isfinite(float(_loss(out).detach())):
                (out["loss"] * weight).backward()
            elif bad is None:
                bad = (out, lo)
        if bad is not None:
            out, lo = bad
            for key, _ in self.nonfinite_flags:
                flags = out.get(key)
                if isinstance(flags, torch.Tensor):
                    merged[key] = torch.ones(total, dtype=torch.bool, device=flags.device)
                    merged[key][lo:lo + flags.numel()] = flags
        return merged

    def diagnose(self, out: dict[str, Any], rank: int = 0) -> str | None:
        """Where a non-finite loss in ``out`` came from, in words (``None``: nothing to say).
        Tasks are numbered over the whole meta-batch: process ``rank`` holds the ``rank``-th
        share of it (:class:`engine.launch.RankSlice`)."""
        where = []
        for key, what in self.nonfinite_flags:
            flags = out.get(key)
            if isinstance(flags, torch.Tensor) and not bool(flags.all()):
                first = rank * flags.numel()
                tasks = [first + i for i in (~flags).nonzero().flatten().tolist()]
                where.append(f"{what} in task(s) {', '.join(map(str, tasks))}")
        return "; ".join(where) or None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the step moved here call the GBML counter "forwards"
        old = prefix + "forwards"
        if old in state_dict and prefix + "steps_done" not in state_dict:
            state_dict[prefix + "steps_done"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
