"""Episodic sampling: turn a labelled split into N-way K-shot tasks.

``EpisodicSampler`` draws an endless stream of meta-batches for training from its own
generator, whose state is checkpointed so a resumed run draws exactly the tasks it would have
drawn. ``TaskList`` is a fixed list of evaluation tasks: task ``i`` depends only on
``(seed, i)``, so every evaluation of a run, at any batch size, sees the same tasks.

Within a task, examples are laid out class-major: support is ``way`` blocks of ``shot``
images with labels ``0, 0, …, 1, 1, …``; query likewise with ``query`` images per class. The
class behind label ``j`` is random, so the layout carries no information.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.errors import DataError

__all__ = ["SPLITS", "SplitData", "EpisodicSampler", "TaskList"]

#: The splits of every dataset, in order: classes of one never appear in another.
SPLITS = ("train", "val", "test")


@dataclass(eq=False)
class SplitData:
    """One split of a dataset held in memory: ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``.

    Labels are class ids ``0 .. num_classes-1``. ``name`` (e.g. ``"glyphs/train"``) appears in
    error messages. The per-class index lists are computed once here so that sampling is a few
    tensor ops.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str = "split"
    class_index: list[torch.Tensor] = field(init=False, repr=False)
    _padded: torch.Tensor = field(init=False, repr=False)
    _sizes: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"{self.name}: images must be a uint8 tensor [N, C, H, W], got "
                f"{self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or tuple(self.labels.shape) != (self.images.shape[0],):
            raise DataError(
                f"{self.name}: labels must be int64 of shape ({self.images.shape[0]},), got "
                f"{self.labels.dtype} of shape {tuple(self.labels.shape)}"
            )
        if self.labels.numel() and int(self.labels.min()) < 0:
            raise DataError(f"{self.name}: labels must be class ids >= 0, got {int(self.labels.min())}")
        num_classes = int(self.labels.max()) + 1 if self.labels.numel() else 0
        order = torch.argsort(self.labels, stable=True)
        self._sizes = torch.bincount(self.labels, minlength=num_classes)
        self.class_index = list(torch.split(order, self._sizes.tolist()))
        width = int(self._sizes.max()) if num_classes else 0
        self._padded = torch.full((num_classes, width), -1, dtype=torch.int64)
        sorted_labels = self.labels[order]
        starts = torch.cumsum(self._sizes, 0) - self._sizes
        self._padded[sorted_labels, torch.arange(len(order)) - starts[sorted_labels]] = order

    def __repr__(self) -> str:
        return (f"SplitData(name={self.name!r}, images={tuple(self.images.shape)}, "
                f"classes={self.num_classes})")

    @property
    def num_classes(self) -> int:
        return len(self.class_index)

    def class_sizes(self) -> torch.Tensor:
        """Number of images of each class, int64 ``[num_classes]``."""
        return self._sizes.clone()

    def __len__(self) -> int:
        return self.images.shape[0]


class _Episodes:
    """Validation and index sampling shared by the sampler and the task list."""

    def __init__(self, split: SplitData, way: int, shot: int, query: int) -> None:
        for key, value in (("way", way), ("shot", shot), ("query", query)):
            if int(value) != value or value < 1:
                raise DataError(f"{split.name}: {key} must be a positive integer, got {value!r}")
        self.split, self.way, self.shot, self.query = split, int(way), int(shot), int(query)
        per_class = self.shot + self.query
        sizes = split._sizes
        self.eligible = torch.nonzero(sizes >= per_class).flatten()
        if len(self.eligible) < self.way:
            if split.num_classes and int(sizes.min()) == int(sizes.max()):
                have = f"{int(sizes.max())} images each"
            elif split.num_classes:
                have = (f"{int(sizes.min())}..{int(sizes.max())} images each, "
                        f"{len(self.eligible)} of them with >= {per_class}")
            else:
                have = "no images"
            raise DataError(
                f"{split.name}: a {self.way}-way task needs {self.way} classes with >= {per_class} "
                f"images (shot {self.shot} + query {self.query}); the split has "
                f"{split.num_classes} classes with {have}"
            )
        self._padded = split._padded[self.eligible]
        self._invalid = torch.arange(self._padded.shape[1]) >= sizes[self.eligible, None]

    def draw(self, num_tasks: int, gen: torch.Generator) -> torch.Tensor:
        """Image indices ``[num_tasks, way, shot+query]``: distinct classes, distinct images per class."""
        class_keys = torch.rand(num_tasks, len(self.eligible), generator=gen)
        classes = class_keys.argsort(dim=1)[:, : self.way]
        image_keys = torch.rand(num_tasks, self.way, self._padded.shape[1], generator=gen)
        image_keys = image_keys + self._invalid[classes].float() * 2.0
        slots = image_keys.argsort(dim=2)[..., : self.shot + self.query]
        return torch.gather(self._padded[classes], 2, slots)

    def batch(self, idx: torch.Tensor) -> TaskBatch:
        """Gather the images of ``idx`` ``[B, way, shot+query]`` into a float ``TaskBatch`` in [0, 1]."""
        num_tasks = idx.shape[0]
        images = self.split.images[idx.flatten()].float().div_(255.0)
        images = images.view(num_tasks, self.way, self.shot + self.query, *images.shape[1:])
        labels = torch.arange(self.way).view(1, self.way, 1)
        support_y = labels.expand(num_tasks, self.way, self.shot).reshape(num_tasks, -1)
        query_y = labels.expand(num_tasks, self.way, self.query).reshape(num_tasks, -1)
        return TaskBatch.trusted(  # labels 0..way-1 by construction: no tensor is read to check them
            images[:, :, : self.shot].reshape(num_tasks, self.way * self.shot, *images.shape[3:]),
            support_y,
            images[:, :, self.shot :].reshape(num_tasks, self.way * self.query, *images.shape[3:]),
            query_y,
            way=self.way,
        )


class EpisodicSampler:
    """Endless meta-batches of ``meta_batch`` random ``way``-way ``shot``-shot tasks from ``split``.

    Raises :class:`DataError` at construction when the split cannot supply such tasks.
    """

    def __init__(self, split: SplitData, way: int, shot: int, query: int, meta_batch: int,
                 seed: int = 0) -> None:
        if int(meta_batch) != meta_batch or meta_batch < 1:
            raise DataError(f"{split.name}: meta_batch must be a positive integer, got {meta_batch!r}")
        self._episodes = _Episodes(split, way, shot, query)
        self.meta_batch, self.seed = int(meta_batch), int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def next_batch(self) -> TaskBatch:
        return self._episodes.batch(self._episodes.draw(self.meta_batch, self.generator))

    def __iter__(self) -> Iterator[TaskBatch]:
        return self

    def __next__(self) -> TaskBatch:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.generator.set_state(state["generator"])


def _task_seed(seed: int, index: int) -> int:
    digest = hashlib.blake2b(f"tasklist:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class TaskList:
    """A fixed list of ``num_tasks`` evaluation tasks; task ``i`` is drawn from a generator seeded by ``(seed, i)``."""

    def __init__(self, split: SplitData, way: int, shot: int, query: int, num_tasks: int,
                 seed: int = 0) -> None:
        if int(num_tasks) != num_tasks or num_tasks < 1:
            raise DataError(f"{split.name}: num_tasks must be a positive integer, got {num_tasks!r}")
        self._episodes = _Episodes(split, way, shot, query)
        self.seed = int(seed)
        gen = torch.Generator()
        self._index = torch.cat([
            self._episodes.draw(1, gen.manual_seed(_task_seed(self.seed, i)))
            for i in range(int(num_tasks))
        ])

    def __len__(self) -> int:
        return self._index.shape[0]

    def batches(self, batch_size: int) -> Iterator[TaskBatch]:
        """Yield the tasks in order, ``batch_size`` at a time (the last batch may be smaller)."""
        if int(batch_size) != batch_size or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        for start in range(0, len(self), int(batch_size)):
            yield self._episodes.batch(self._index[start : start + int(batch_size)])
