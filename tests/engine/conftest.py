"""Stand-ins for the engine tests: a linear "meta-learner", a task sampler and a task list.

They follow the contracts the engine relies on (the algorithm's output dict, the sampler's
``next_batch``/``state_dict``, the task list's ``batches``) without any meta-learning, so the
engine is tested on its own and in milliseconds.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lil_meta.datasets.task_batch import TaskBatch

WAY, SHOT, QUERY, SIDE = 3, 2, 4, 4


def random_batch(num_tasks: int, gen: torch.Generator) -> TaskBatch:
    def part(per_class):
        x = torch.rand(num_tasks, WAY * per_class, 1, SIDE, SIDE, generator=gen)
        y = torch.arange(WAY).repeat_interleave(per_class).expand(num_tasks, -1).contiguous()
        return x + y[..., None, None, None] * 0.3, y  # learnable: class shifts the pixels

    return TaskBatch(*part(SHOT), *part(QUERY))


class TinyAlgorithm(nn.Module):
    """Linear classifier on the query images; draws from the global RNG in training (noise),
    so tests can see whether the RNG state is saved and restored."""

    def __init__(self, loss_scale: float = 1.0) -> None:
        super().__init__()
        self.model = nn.Linear(SIDE * SIDE, WAY)
        self.loss_scale = loss_scale

    def begin_step(self, step: int) -> None:
        pass

    def diagnose(self, out, rank: int = 0) -> str | None:
        return None

    def forward(self, batch: TaskBatch, step: int = 0) -> dict[str, torch.Tensor]:
        x = batch.query_x.flatten(2)
        if self.training:
            x = x + 0.01 * torch.randn_like(x)
        logits = self.model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten()) * self.loss_scale
        task_acc = (logits.argmax(-1) == batch.query_y).float().mean(1).detach()
        return {"loss": loss, "loss_ce": loss.detach(), "acc": task_acc.mean(), "task_acc": task_acc}


class TinySampler:
    def __init__(self, meta_batch: int = 2, seed: int = 0) -> None:
        self.meta_batch = meta_batch
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> TaskBatch:
        return random_batch(self.meta_batch, self.generator)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state) -> None:
        self.generator.set_state(state["generator"])


class TinyTaskList:
    def __init__(self, num_tasks: int = 7, seed: int = 1) -> None:
        self.tasks = random_batch(num_tasks, torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.tasks.num_tasks

    def batches(self, batch_size: int):
        for lo in range(0, len(self), batch_size):
            yield self.tasks.tasks(lo, lo + batch_size)


@pytest.fixture
def tiny():
    return types.SimpleNamespace(Algorithm=TinyAlgorithm, Sampler=TinySampler,
                                 TaskList=TinyTaskList, random_batch=random_batch)
