"""The rows ``tools/benchmark.py`` times: a config's own training step (:class:`Runner`) and the
baselines built on the first config's inputs and network (:class:`NaiveMAML`,
:class:`QueryFloor`; ``higher``'s MAML is :class:`tools.higher_reference.HigherMAML`).

Every row has ``name``, ``path``, ``device``, ``meta_batch``, ``times`` and ``step()`` (one
timed meta-training step, in seconds). The rows share nothing but their inputs: each builds its
own network copy and optimizer, so a row can run alone in a process of its own
(``--isolate``).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.build import build_training
from lil_meta.engine.config import load_config
from lil_meta.engine.defaults import resolve_device
from lil_meta.engine.precision import apply_precision
from lil_meta.engine.trainer import MetaTrainer
from lil_meta.tools.higher_reference import stock_layers
from lil_meta.tools.reference_maml import adapt


def synthetic_batch(cfg, device) -> TaskBatch:
    """A meta-batch of the config's shape (way, shot, query, image size and channels, tasks),
    uniform random pixels from a fixed seed: the same batch in every process."""
    d, tasks = cfg.data, cfg.solver.meta_batch
    g = torch.Generator().manual_seed(0)
    shape = (d.channels, d.image_size, d.image_size)
    labels = lambda n: torch.arange(d.way).repeat_interleave(n).repeat(tasks, 1)  # noqa: E731
    return TaskBatch(
        torch.rand(tasks, d.way * d.shot, *shape, generator=g), labels(d.shot),
        torch.rand(tasks, d.way * d.query, *shape, generator=g), labels(d.query),
    ).to(device)


def core(algo):
    """The main algorithm of a pretrain-then-train chain, or the algorithm itself."""
    return getattr(algo, "main", algo)


def _path(algo, device) -> str:
    main = core(algo)
    if not hasattr(main, "policy"):  # no inner loop (ProtoNet)
        return f"{device.type}/{type(main).__name__.lower()}"
    policy = main.policy(device)
    return f"{device.type}/{policy.engine}/nhwc={policy.channels_last}"


class _SameBatch:
    def __init__(self, batch):
        self.batch = batch

    def next_batch(self):
        return self.batch

    def state_dict(self):
        return {}


class Runner:
    """One config's algorithm, optimizer and batch, stepping as the trainer does (its own
    ``MetaTrainer``: the config's optimizer and precision, ``solver.task_chunk``, fault checks,
    the logging schedule from iteration 0). Each step first sets its precision's switches, so
    rows of different precisions can be interleaved in one process."""

    def __init__(self, path: str, overrides: list[str], own: tuple[str, ...] = ()):
        self.cfg = load_config(path, [*overrides, *own])
        self.name = " ".join([Path(path).stem, *own])
        self.device = resolve_device(self.cfg.device)
        self.precision = apply_precision(self.cfg.solver.precision, self.device)
        self.algo, self.optimizer = build_training(self.cfg, self.device)  # as a run builds them
        self.batch = synthetic_batch(self.cfg, self.device)
        self.trainer = MetaTrainer(self.algo, _SameBatch(self.batch), self.optimizer, device=self.device,
                                   task_chunk=self.cfg.solver.task_chunk, precision=self.precision)
        self.meta_batch = self.cfg.solver.meta_batch
        self.path = _path(self.algo, self.device)
        self.times: list[float] = []

    @property
    def chunk(self) -> int | None:
        """The tasks per forward and backward ``task_chunk: auto`` settled on (``None``: not auto)."""
        return self.trainer._auto_chunks.last if self.trainer.task_chunk == "auto" else None

    def step(self) -> float:
        start = time.perf_counter()
        apply_precision(self.precision.name, self.device)
        self.trainer.run_step()
        self.trainer.iter += 1  # the next step (the algorithm's logging schedule follows it)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


class NaiveMAML:
    """MAML written the plain way — the reference MAML's inner loop
    (:func:`tools.reference_maml.adapt`: ``torch.autograd.grad(create_graph=True)`` per step,
    first order without the graph) — one task after another, PyTorch's stock layers
    (:func:`~tools.higher_reference.stock_layers`) and the default memory layout; one backward
    of the mean loss over the tasks."""

    name = "naive per-task MAML"

    def __init__(self, runner: Runner):
        self.model = stock_layers(copy.deepcopy(runner.algo.model))  # its own weights: both get Adam steps
        self.batch, self.device = runner.batch, runner.device
        algo = core(runner.algo)
        self.lr, self.steps, self.first_order = float(algo.inner_lr), algo.inner_steps, algo.first_order
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=runner.cfg.solver.lr)
        self.meta_batch = runner.cfg.solver.meta_batch
        self.path = f"{self.device.type}/naive-loop"
        self.times: list[float] = []

    def loss(self) -> torch.Tensor:
        b = self.batch
        total = 0.0
        for i in range(b.num_tasks):
            params = adapt(self.model, b.support_x[i], b.support_y[i], self.lr, self.steps,
                           create_graph=not self.first_order)
            total = total + F.cross_entropy(functional_call(self.model, params, (b.query_x[i],)), b.query_y[i])
        return total / b.num_tasks

    def step(self) -> float:
        start = time.perf_counter()
        loss = self.loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


class QueryFloor(NaiveMAML):
    """The query pass alone: each task's query forward at θ⁰ and its backward, no inner loop,
    with the query images in the layout the first config's engine uses. Any algorithm that
    trains the network on the query loss does at least this much work, so its time bounds
    every speed-up that leaves the query pass alone (``--floor``)."""

    name = "query pass only (floor)"

    def __init__(self, runner: Runner):
        super().__init__(runner)
        self.steps = 0
        self.batch = core(runner.algo).prepared(runner.batch)
        self.path = f"{self.device.type}/query-only/nhwc={core(runner.algo).policy(self.device).channels_last}"
