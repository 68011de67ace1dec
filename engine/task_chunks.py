"""One training step's forward and backward passes over a meta-batch, chunk by chunk
(``solver.task_chunk``; :class:`engine.trainer.MetaTrainer` calls them).

Each chunk's loss is weighted by its share of the tasks before its backward, so the accumulated
gradient and the weighted means of the scalars equal those of one pass over the whole batch
(every term is a mean over tasks) while only one chunk's graph is alive at a time.
``task_chunk: auto`` (:class:`AutoTaskChunks`) lets the algorithm say the chunk and shrinks a
batched chunk that does not fit in the device's memory.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from lil_meta.engine.rng import get_rng_state, set_rng_state

logger = logging.getLogger(__name__)

__all__ = ["AutoTaskChunks", "forward_backward", "is_scalar", "loss_of"]


def is_scalar(value: Any) -> bool:
    """A logged scalar: a 0-dim tensor or a Python number."""
    return (isinstance(value, torch.Tensor) and value.dim() == 0) or isinstance(value, (int, float))


def loss_of(out: dict[str, Any]) -> torch.Tensor:
    if "loss" not in out:
        raise KeyError("algorithm output has no 0-dim 'loss' entry to minimise")
    return out["loss"]


Autocast = Callable[[], AbstractContextManager]


def forward_backward(algorithm, batch, step: int, chunk: int,
                     autocast: Autocast = contextlib.nullcontext) -> dict[str, Any]:
    """``algorithm``'s output on ``batch`` at training step ``step`` after its backward, ``chunk``
    tasks at a time (0, or more than the batch: all at once); per-task outputs concatenated,
    scalars as their task-weighted means. Each forward runs in ``autocast()`` (the run's
    precision, :mod:`engine.precision`), each backward outside it."""
    total = batch.num_tasks
    size = chunk if 0 < chunk < total else total
    if size == total:
        with autocast():
            out = algorithm(batch, step=step)
        loss_of(out).backward()
        return out
    merged: dict[str, Any] = {}
    per_task: dict[str, list[torch.Tensor]] = defaultdict(list)
    for lo in range(0, total, size):
        part = batch.tasks(lo, lo + size)
        with autocast():
            out = algorithm(part, step=step)
        weight = part.num_tasks / total
        (loss_of(out) * weight).backward()
        for key, value in out.items():
            if is_scalar(value):
                merged[key] = merged.get(key, 0.0) + weight * (value.detach() if isinstance(value, torch.Tensor)
                                                               else value)
            elif isinstance(value, torch.Tensor) and value.dim() == 1 and len(value) == part.num_tasks:
                per_task[key].append(value.detach())
        del out  # the chunk's graph went with its backward; nothing of it outlives the chunk
    merged.update({key: torch.cat(values) for key, values in per_task.items()})
    return merged


class AutoTaskChunks:
    """``task_chunk: auto`` on one device: the chunk the algorithm's optional
    ``auto_task_chunk(device, step)`` names (1: the per-task loop; 0 or none said: the whole
    batch), and, where a chunk of several tasks runs out of device memory
    (``torch.OutOfMemoryError``), the largest chunk that fits, found by bisection and kept for
    the steps after (:meth:`fit`). Each choice is logged once."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.fitted: int | None = None  # the largest chunk found to fit, after an OOM
        self.last: int | None = None  # the chunk of the last step
        self._said: set[tuple[int, int]] = set()

    def chunk(self, algorithm, total: int, step: int) -> int:
        """This step's chunk, capped by one found to fit."""
        ask = getattr(algorithm, "auto_task_chunk", None)
        chunk = int(ask(self.device, step)) if ask is not None else 0
        chunk = total if chunk <= 0 or chunk > total else chunk
        if self.fitted is not None:
            chunk = min(chunk, self.fitted)
        self.last = chunk
        if (chunk, total) not in self._said:
            self._said.add((chunk, total))
            logger.info("solver.task_chunk=auto: forward and backward %d of the %d tasks at a time%s", chunk, total,
                        " (the per-task loop: each task's graph is freed before the next one's is built)"
                        if chunk == 1 and total > 1 else "")
        return chunk

    def forward_backward(self, algorithm, batch, step: int, optimizer: torch.optim.Optimizer,
                         autocast: Autocast = contextlib.nullcontext) -> dict[str, Any]:
        chunk = self.chunk(algorithm, batch.num_tasks, step)
        if chunk == 1:
            return forward_backward(algorithm, batch, step, 1, autocast)
        return self.fit(algorithm, batch, step, chunk, optimizer, autocast)

    def fit(self, algorithm, batch, step: int, chunk: int, optimizer: torch.optim.Optimizer,
            autocast: Autocast = contextlib.nullcontext) -> dict[str, Any]:
        """The passes in chunks of ``chunk`` tasks; if they run out of device memory, the largest
        chunk that fits, by bisection, each try from the same random state and with the
        gradients cleared (``optimizer``'s), so the step computes what a run with that
        ``task_chunk`` computes. One task that does not fit raises the error."""
        rng = get_rng_state()
        fits, fails, out = 0, chunk + 1, None
        size = chunk
        while True:
            try:
                out = forward_backward(algorithm, batch, step, size, autocast)
            except torch.OutOfMemoryError:
                if size == 1:  # nothing smaller to try
                    raise
                out = None
            if out is not None:
                fits = size
            else:
                fails = size
                self._release(optimizer)
            if fails - fits <= 1:
                break
            out = None
            self._release(optimizer)
            set_rng_state(rng)
            size = (fits + fails) // 2
        if fits != chunk:
            logger.warning("solver.task_chunk=auto: %d tasks at a time do not fit in %s memory; %d at a time from "
                           "now on (the largest chunk that fits: %d do not)", chunk, self.device, fits, fails)
            self.fitted = self.last = fits
        if out is None:  # the last try was one that did not fit: run the one that does
            set_rng_state(rng)
            out = forward_backward(algorithm, batch, step, fits, autocast)
        return out

    def _release(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
