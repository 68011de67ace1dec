"""``TaskBatch``: the tasks of one meta-batch, stacked along a leading task dimension."""

from __future__ import annotations

from typing import NamedTuple

import torch


class _Tensors(NamedTuple):
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


class TaskBatch(_Tensors):
    """B few-shot tasks: support ``[B, N*K, C, H, W]`` / ``[B, N*K]``, query ``[B, N*Q, C, H, W]`` / ``[B, N*Q]``.

    Images are floating point, labels are int64 in ``0 .. N-1`` within each task; ``way`` is N.
    A tuple of the four tensors. It is checked once, where it is made: ``TaskBatch(sx, sy, qx,
    qy)`` checks shapes, dtypes and label ranges (a ``ValueError`` naming the offending tensor
    instead of a shape error deep inside a convolution) and reads N from the labels;
    :meth:`trusted` is for producers whose batches are right by construction (the samplers) and
    reads no tensor, so a training step never waits on a check.
    """

    way: int

    def __new__(cls, support_x, support_y, query_x, query_y, way: int | None = None):
        batch = super().__new__(cls, support_x, support_y, query_x, query_y)
        batch._check_layout()
        batch.way = batch._check_labels(way)
        return batch

    @classmethod
    def trusted(cls, support_x, support_y, query_x, query_y, *, way: int) -> TaskBatch:
        """A batch whose labels a producer guarantees to be ``0 .. way-1`` (not read)."""
        batch = tuple.__new__(cls, (support_x, support_y, query_x, query_y))
        batch.way = int(way)
        return batch

    @classmethod
    def _make(cls, iterable) -> TaskBatch:  # ``_replace`` builds through here: checked again
        return cls(*iterable)

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    @property
    def counts(self) -> dict[str, int]:
        """What the batch holds, by unit; the trainer logs each as ``<unit>_per_s``."""
        return {"tasks": self.num_tasks}

    def to(self, device, non_blocking: bool = False) -> TaskBatch:
        return TaskBatch.trusted(*(t.to(device, non_blocking=non_blocking) for t in self), way=self.way)

    def pin_memory(self) -> TaskBatch:
        return TaskBatch.trusted(*(t.pin_memory() for t in self), way=self.way)

    def tasks(self, start: int, stop: int) -> TaskBatch:
        """Tasks ``start .. stop-1`` (a chunk of the meta-batch, or one process's share)."""
        return TaskBatch.trusted(*(t[start:stop] for t in self), way=self.way)

    def _check_layout(self) -> None:
        for name in ("support_x", "query_x"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"TaskBatch.{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 5:
                raise ValueError(
                    f"TaskBatch.{name}: expected 5 dims [tasks, examples, C, H, W], got shape {tuple(t.shape)}"
                )
            if not t.is_floating_point():
                raise ValueError(f"TaskBatch.{name}: expected a floating-point tensor, got {t.dtype}")
        if self.query_x.shape[0] != self.support_x.shape[0]:
            raise ValueError(
                f"TaskBatch.query_x: {self.query_x.shape[0]} tasks but support_x has {self.support_x.shape[0]}"
            )
        for xname, yname in (("support_x", "support_y"), ("query_x", "query_y")):
            x, y = getattr(self, xname), getattr(self, yname)
            if not isinstance(y, torch.Tensor):
                raise ValueError(f"TaskBatch.{yname}: expected a torch.Tensor, got {type(y).__name__}")
            if y.dtype != torch.int64:
                raise ValueError(f"TaskBatch.{yname}: expected int64 labels, got {y.dtype}")
            if tuple(y.shape) != tuple(x.shape[:2]):
                raise ValueError(
                    f"TaskBatch.{yname}: expected shape {tuple(x.shape[:2])} to match {xname}, got {tuple(y.shape)}"
                )
        if self.query_x.shape[2:] != self.support_x.shape[2:]:
            raise ValueError(
                f"TaskBatch.query_x: image shape {tuple(self.query_x.shape[2:])} differs from "
                f"support_x's {tuple(self.support_x.shape[2:])}"
            )

    def _check_labels(self, way: int | None) -> int:
        """N: ``way``, or one more than the largest support label; every label in ``0 .. N-1``."""
        if way is None:
            way = int(self.support_y.max()) + 1 if self.support_y.numel() else 0
        for name in ("support_y", "query_y"):
            y = getattr(self, name)
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= way):
                raise ValueError(
                    f"TaskBatch.{name}: labels must lie in 0..{way - 1} for a {way}-way batch "
                    f"(the support labels'), got range {int(y.min())}..{int(y.max())}"
                )
        return int(way)
