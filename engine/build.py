"""A run's components from its config: a pure function of (config, device, processes).

:func:`build_components` is what every way of running the framework builds with — the command
line and SLURM jobs (:mod:`engine.runner`), the benchmarks (``tools/bench_rows.py``) — so
they train the same objects: the algorithm over its network, the config's optimizer and lr
schedule, this process's share of the training tasks, and the fixed validation and test task
lists. It seeds the generators with ``cfg.seed`` first, so the same config gives the same
initial weights and tasks wherever it is built, and it writes nothing: bad input fails here,
before a run folder is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from lil_meta.datasets import EpisodicSampler, TaskList, build_dataset
from lil_meta.engine.defaults import build_lr_scheduler, build_optimizer, seed_all
from lil_meta.engine.launch import RankSlice, World
from lil_meta.models import build_algorithm

__all__ = ["Components", "build_components", "build_training"]


@dataclass(frozen=True)
class Components:
    """What a run trains and tests; the training parts are ``None`` for an evaluation."""

    algorithm: torch.nn.Module
    test_tasks: TaskList
    sampler: RankSlice | None = None
    val_tasks: TaskList | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None


def _task_list(cfg: DictConfig, dataset, split: str, num_tasks: int) -> TaskList:
    d = cfg.data
    return TaskList(dataset.split(split), d.way, d.shot, d.query, num_tasks, seed=cfg.test.seed)


def build_components(cfg: DictConfig, device: torch.device, world: World | None = None, *,
                     train: bool = True) -> Components:
    """The dataset's task lists and sampler, the algorithm on ``device``, and (``train``) the
    optimizer and lr schedule. Every process draws the whole meta-batch and keeps its share
    (:class:`engine.launch.RankSlice`)."""
    world = world or World()
    seed_all(int(cfg.seed))  # the initial weights and the tasks follow from the config alone
    dataset = build_dataset(cfg.data)
    test_tasks = _task_list(cfg, dataset, "test", cfg.test.tasks)
    algorithm = build_algorithm(cfg).to(device)
    if not train:
        return Components(algorithm, test_tasks)
    d = cfg.data
    sampler = RankSlice(EpisodicSampler(dataset.split("train"), d.way, d.shot, d.query, cfg.solver.meta_batch,
                                        seed=cfg.seed), world)
    val_tasks = _task_list(cfg, dataset, "val", cfg.test.val_tasks)
    optimizer = build_optimizer(cfg, algorithm)
    return Components(algorithm, test_tasks, sampler, val_tasks, optimizer, build_lr_scheduler(cfg, optimizer))


def build_training(cfg: DictConfig, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The algorithm and its optimizer alone, seeded as :func:`build_components` seeds (no
    dataset: for a benchmark that feeds its own task batches)."""
    seed_all(int(cfg.seed))
    algorithm = build_algorithm(cfg).to(device)
    return algorithm, build_optimizer(cfg, algorithm)
