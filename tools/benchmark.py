#!/usr/bin/env python
"""Time meta-training iterations of one or more configs side by side, in this one process.

    python tools/benchmark.py --config-file configs/maml_5shot.yaml \\
        --config-file configs/maml_lil_5shot.yaml --iters 10 [--json] [key=value ...]

Each config's algorithm runs full meta-training steps (forward, backward, Adam step) on
synthetic task batches of the configured shape (way, shot, query, image size, meta-batch), so
no dataset is read. The configs are timed in interleaved rounds after a warm-up, which spreads
the machine's noise evenly over them; the table reports the median seconds per iteration and
tasks/s, and ratios to the first config. Overrides apply to every config; overrides for one
config alone follow its path in the same argument, e.g. to compare two engines:

    python tools/benchmark.py --config-file configs/maml_1shot.yaml \
        --config-file "configs/maml_1shot.yaml algorithm.engine=vmap"

Alongside, on the first config's inputs and network, a **naive baseline** is timed in the same
rounds: MAML written the plain way — a stateful clone of the network per task whose parameters
are replaced by ``θ − α·g`` after each ``torch.autograd.grad(create_graph=True)`` (first-order:
without the graph), one task after another, with PyTorch's stock ``BatchNorm2d`` and the
default memory layout — and every config's speed is also given relative to it (``x_naive``:
> 1 means faster than the naive loop).

``--floor`` adds the query pass alone (each task's query forward at θ⁰ and its backward, in the
engine's layout, no inner loop): the least work of any algorithm that trains on the query
loss, hence a bound on how much faster than MAML a variant can be at that shape.

The process's CPU malloc is set as ``tools/train_net.py`` sets it (:mod:`engine.cpu_memory`;
``LIL_CPU_MALLOC=system`` for glibc's defaults); it applies to every row, baselines included.

``--json`` prints one object per config with ``tasks_per_s``, ``s_per_iter``, ``peak_mem_mb``,
``path`` (device/engine/channels-last images) and ``cpu_malloc``. Peak memory is
``torch.cuda.max_memory_allocated`` of that config's steps on GPU; on CPU it is the process's
peak RSS so far (all configs share the process, so it is an upper bound for each; run one
config alone for its own figure).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.config import load_config
from lil_meta.engine.cpu_memory import keep_freed_memory
from lil_meta.engine.defaults import resolve_device
from lil_meta.engine.errors import UserInputError
from lil_meta.engine.trainer import MetaTrainer
from lil_meta.models import build_algorithm
from lil_meta.models.backbones.layers import TaskBatchNorm2d


def synthetic_batch(cfg, device) -> TaskBatch:
    d, tasks = cfg.data, cfg.solver.meta_batch
    g = torch.Generator().manual_seed(0)
    shape = (d.channels, d.image_size, d.image_size)
    labels = lambda n: torch.arange(d.way).repeat_interleave(n).repeat(tasks, 1)  # noqa: E731
    return TaskBatch(
        torch.rand(tasks, d.way * d.shot, *shape, generator=g), labels(d.shot),
        torch.rand(tasks, d.way * d.query, *shape, generator=g), labels(d.query),
    ).to(device)


def _clone_module(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose parameters are differentiable clones of the originals."""
    clone = copy.copy(module)
    clone._parameters = {n: (None if p is None else p.clone()) for n, p in module._parameters.items()}
    clone._buffers = dict(module._buffers)
    clone._modules = {n: _clone_module(m) for n, m in module._modules.items()}
    return clone


def _params(module: torch.nn.Module):
    """(owner module, name, tensor) of every parameter slot, in a fixed order."""
    for mod in module.modules():
        for name, p in mod._parameters.items():
            if p is not None:
                yield mod, name, p


def _stock_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with each :class:`TaskBatchNorm2d` replaced by PyTorch's own ``BatchNorm2d``
    (batch statistics, same weights): the layer most MAML code uses, without this project's
    cheaper-to-differentiate-twice backward."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, TaskBatchNorm2d):
                stock = torch.nn.BatchNorm2d(child.num_features, eps=child.eps, track_running_stats=False)
                stock.load_state_dict(child.state_dict())
                setattr(parent, name, stock.to(child.weight.device, child.weight.dtype))
    return model


class NaiveMAML:
    """The per-task loop most MAML code runs (module doc): the baseline of the ratios."""

    name = "naive per-task MAML"

    def __init__(self, runner: Runner):
        self.model = _stock_batch_norm(copy.deepcopy(runner.algo.model))  # its own weights: both get Adam steps
        self.batch, self.device = runner.batch, runner.device
        algo = _core(runner.algo)
        self.lr, self.steps, self.first_order = float(algo.inner_lr), algo.inner_steps, algo.first_order
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=runner.cfg.solver.lr)
        self.meta_batch = runner.cfg.solver.meta_batch
        self.path = f"{self.device.type}/naive-loop"
        self.times: list[float] = []

    def loss(self) -> torch.Tensor:
        b = self.batch
        total = 0.0
        for i in range(b.num_tasks):
            learner = _clone_module(self.model)
            for _ in range(self.steps):
                slots = list(_params(learner))
                support_loss = F.cross_entropy(learner(b.support_x[i]), b.support_y[i])
                grads = torch.autograd.grad(support_loss, [p for _, _, p in slots],
                                            create_graph=not self.first_order)
                for (mod, name, p), g in zip(slots, grads, strict=True):
                    mod._parameters[name] = p - self.lr * g
            total = total + F.cross_entropy(learner(b.query_x[i]), b.query_y[i])
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
        self.batch = _core(runner.algo).prepared(runner.batch)
        self.path = f"{self.device.type}/query-only/nhwc={_core(runner.algo).resolved_channels_last(self.device)}"


class _SameBatch:
    def __init__(self, batch):
        self.batch = batch

    def next_batch(self):
        return self.batch

    def state_dict(self):
        return {}


def _core(algo):
    """The main algorithm of a pretrain-then-train chain, or the algorithm itself."""
    return getattr(algo, "main", algo)


def _path(algo, device) -> str:
    core = _core(algo)
    return f"{device.type}/{core.resolved_engine(device)}/nhwc={core.resolved_channels_last(device)}"


class Runner:
    """One config's algorithm, optimizer and batch, stepping like the trainer does."""

    def __init__(self, path: str, overrides: list[str], own: tuple[str, ...] = ()):
        self.cfg = load_config(path, [*overrides, *own])
        self.name = " ".join([Path(path).stem, *own])
        self.device = resolve_device(self.cfg.device)
        torch.manual_seed(self.cfg.seed)
        self.algo = build_algorithm(self.cfg).to(self.device)
        self.optimizer = torch.optim.Adam(self.algo.parameters(), lr=self.cfg.solver.lr)
        self.batch = synthetic_batch(self.cfg, self.device)
        # the trainer's own step (chunking, fault checks included) on the same batch every time
        self.trainer = MetaTrainer(self.algo, _SameBatch(self.batch), self.optimizer, self.device,
                                   task_chunk=self.cfg.solver.task_chunk)
        self.meta_batch = self.cfg.solver.meta_batch
        self.path = _path(self.algo, self.device)
        self.times: list[float] = []

    def step(self) -> float:
        start = time.perf_counter()
        self.trainer.run_step()
        self.trainer.iter += 1  # the next step (the algorithm's logging schedule follows it)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", action="append", required=True, metavar="FILE")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per config")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object per config")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the naive baseline (e.g. to read one config's own peak RSS on CPU)")
    parser.add_argument("--floor", action="store_true",
                        help="also time the query pass alone (no inner loop): the bound on speed-ups")
    parser.add_argument("opts", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    malloc_note = keep_freed_memory()  # as tools/train_net.py does; applies to the baseline too
    try:
        runners = []
        for spec in args.config_file:
            path, *own = spec.split()
            runners.append(Runner(path, args.opts, tuple(own)))
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    naive = None if args.no_baseline else NaiveMAML(runners[0])
    floor = QueryFloor(runners[0]) if args.floor else None
    timed = [r for r in (*runners, naive, floor) if r is not None]
    for runner in timed:
        for _ in range(args.warmup):
            runner.step()
    peaks: dict[int, float] = {}
    for _ in range(args.iters):
        for runner in timed:
            if runner.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(runner.device)
            runner.times.append(runner.step())
            if runner.device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(runner.device) / 2**20
            else:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            peaks[id(runner)] = max(peaks.get(id(runner), 0.0), peak)
    base = statistics.median(runners[0].times)
    naive_s = statistics.median(naive.times) if naive else float("nan")
    if not args.json:
        print(f"{malloc_note}; {torch.get_num_threads()} threads")
    for runner in timed:
        s = statistics.median(runner.times)
        row = {
            "config": runner.name, "s_per_iter": s, "tasks_per_s": runner.meta_batch / s,
            "peak_mem_mb": round(peaks[id(runner)], 1), "path": runner.path,
            "ratio_to_first": s / base, "x_naive": naive_s / s,
            "threads": torch.get_num_threads(), "cpu_malloc": malloc_note,
        }
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['config']:<24} {s:8.3f} s/iter  {row['tasks_per_s']:7.2f} tasks/s  "
                  f"x{row['ratio_to_first']:.3f} of first  x{row['x_naive']:.2f} vs naive  "
                  f"{row['peak_mem_mb']:8.1f} MB  ({row['path']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
