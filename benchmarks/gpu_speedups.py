"""S6 of the GPU session (``benchmarks/gpu_session.py``): the candidate speedups, each measured against
the plain step before any of them becomes a setting.

Second-order MAML (vmap engine) at meta-batch 4 1-shot, where a step may be bound by kernel
launches, and at meta-batch 32 5-shot, where it is bound by the convolutions. Rows, interleaved
in one process (``gpu_bench.time_group``):

- ``plain``: the trainer's step as a run takes it (a fixed batch already on the device);
- ``cudnn.benchmark``: the same, cuDNN choosing each convolution's algorithm by timing it once
  per shape (the shapes of a run never change);
- ``channels_last``: support and query images NHWC (``algorithm.execution.channels_last=all``);
- ``cuda graph``: the step's forward, backward and Adam update (``capturable=True``) captured once
  with ``torch.cuda.graph`` and replayed; the finiteness check and gradient norm are left out,
  so the row is a bound on what a graphed trainer step could gain. At meta-batch 4 only: that is
  where launches may bind, and the graph's memory pool keeps a whole step's activations, which
  at meta-batch 32 would leave the other rows too little of the card;
- ``sampled batches``: the trainer drawing real episodes from the built-in dataset through its
  prefetcher and copying them to the device, against ``plain``'s fixed batch: what sampling on
  the host costs a step, the most that sampling on the device could save.

A dry run (CPU, 16×16) runs every row that the CPU has and says which it left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from gpu_bench import _record, _release, _runner, _shape, time_group
from lil_meta.datasets import EpisodicSampler, build_dataset
from lil_meta.engine.task_chunks import forward_backward
from lil_meta.engine.trainer import MetaTrainer
from lil_meta.tools.bench_rows import Runner

Emit = Callable[[dict], None]
LOGGING_PERIOD = 10_000  # every timed step a non-logging one


class CudnnBenchmark:
    """A runner's step with ``torch.backends.cudnn.benchmark`` on, off again after it."""

    def __init__(self, runner: Runner):
        self.runner, self.device, self.path = runner, runner.device, runner.path + "+cudnn.benchmark"

    def step(self) -> float:
        torch.backends.cudnn.benchmark = True
        try:
            return self.runner.step()
        finally:
            torch.backends.cudnn.benchmark = False


class GraphedStep:
    """A runner's forward, backward and Adam update captured as one CUDA graph, then replayed.

    The whole-network recipe of PyTorch's CUDA-graph notes: warm-up steps on a side stream, the
    gradients set to ``None`` before capture so the backward allocates them from the graph's pool,
    and an Adam with ``capturable=True`` (its step count on the device). The runner's own
    optimizer is left alone; this row updates the shared weights with its own Adam.
    """

    def __init__(self, runner: Runner, warmup: int = 3):
        self.device, self.path = runner.device, runner.path + "+cuda-graph"
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": g["params"]}
                  for g in runner.optimizer.param_groups]
        for group in groups:  # Adam's defaults for these, capturable=True below
            for key in ("capturable", "fused", "foreach"):
                group.pop(key, None)
        self.algo, self.batch = runner.algo, runner.batch
        self.optimizer = torch.optim.Adam(groups, capturable=True)
        self.autocast = runner.precision.autocast
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.out = forward_backward(self.algo, self.batch, 1, 0, self.autocast)
            self.optimizer.step()

    def _step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        forward_backward(self.algo, self.batch, 1, 0, self.autocast)
        self.optimizer.step()

    def step(self) -> float:
        start = time.perf_counter()
        self.graph.replay()
        torch.cuda.synchronize()
        return time.perf_counter() - start


class SampledBatches:
    """A runner whose trainer draws real episodes of its config's dataset (the built-in glyphs at
    the runner's shape) through the trainer's prefetcher, as a run does."""

    def __init__(self, runner: Runner):
        d = runner.cfg.data
        dataset = build_dataset(d)
        sampler = EpisodicSampler(dataset.split("train"), d.way, d.shot, d.query, runner.meta_batch, seed=0)
        runner.trainer = MetaTrainer(runner.algo, sampler, runner.optimizer, device=runner.device,
                                     task_chunk=runner.cfg.solver.task_chunk, precision=runner.precision)
        self.runner, self.device, self.path = runner, runner.device, runner.path + "+sampled"

    def step(self) -> float:
        return self.runner.step()


def speedups(emit: Emit, dry_run: bool) -> None:
    """S6: the rows above at (1-shot, meta-batch 4) and (5-shot, meta-batch 32); dry run at 2."""
    cuda = not dry_run
    if not cuda:
        emit({"section": "S6", "note": "dry run: cudnn.benchmark and the CUDA graph need CUDA; their rows are "
                                       "left out"})
    for shot, mb in ((1, 2), (5, 2)) if dry_run else ((1, 4), (5, 32)):
        shape = _shape(dry_run) + [f"data.shot={shot}", f"solver.meta_batch={mb}"]
        own = ("algorithm.execution.engine=vmap", f"algorithm.diagnostics.metrics_period={LOGGING_PERIOD}")
        config = f"maml_{shot}shot.yaml"
        rows: dict[str, object] = {
            "plain": _runner(config, shape, *own),
            "channels_last": _runner(config, shape, *own, "algorithm.execution.channels_last=all"),
            "sampled batches": SampledBatches(_runner(config, shape, *own)),
        }
        if cuda:
            rows["cudnn.benchmark"] = CudnnBenchmark(_runner(config, shape, *own))
        if cuda and mb == 4:
            try:
                rows["cuda graph"] = GraphedStep(_runner(config, shape, *own))
            except Exception as error:  # noqa: BLE001 - a step that cannot be captured is the finding
                emit({"section": "S6", "shot": shot, "meta_batch": mb, "row": "cuda graph",
                      "error": f"capture failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}"})
        measured = time_group(rows, 2, 2 if dry_run else 5)
        _record(emit, "S6", {"shot": shot, "meta_batch": mb}, measured, rows)
        del rows
        _release(None)


SECTIONS = {"S6": speedups}
