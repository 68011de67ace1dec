#!/usr/bin/env python
"""Time meta-training iterations of one or more configs side by side, in this one process.

    python tools/benchmark.py --config-file configs/maml_5shot.yaml \\
        --config-file configs/maml_lil_5shot.yaml --iters 10 [--json] [key=value ...]

Each config's algorithm runs full meta-training steps (forward, backward, Adam step) on
synthetic task batches of the configured shape (way, shot, query, image size, meta-batch), so
no dataset is read. The configs are timed in interleaved rounds after a warm-up, which spreads
the machine's noise evenly over them; the table reports the median seconds per iteration and
tasks/s, and ratios to the first config. Overrides apply to every config.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.task_batch import TaskBatch  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.defaults import resolve_device  # noqa: E402
from engine.errors import UserInputError  # noqa: E402
from models import build_algorithm  # noqa: E402


def synthetic_batch(cfg, device) -> TaskBatch:
    d, tasks = cfg.data, cfg.solver.meta_batch
    g = torch.Generator().manual_seed(0)
    shape = (d.channels, d.image_size, d.image_size)
    labels = lambda n: torch.arange(d.way).repeat_interleave(n).repeat(tasks, 1)  # noqa: E731
    return TaskBatch(
        torch.rand(tasks, d.way * d.shot, *shape, generator=g), labels(d.shot),
        torch.rand(tasks, d.way * d.query, *shape, generator=g), labels(d.query),
    ).to(device)


class Runner:
    """One config's algorithm, optimizer and batch, stepping like the trainer does."""

    def __init__(self, path: str, overrides: list[str]):
        self.cfg = load_config(path, overrides)
        self.name = Path(path).stem
        self.device = resolve_device(self.cfg.device)
        torch.manual_seed(self.cfg.seed)
        self.algo = build_algorithm(self.cfg).to(self.device)
        self.optimizer = torch.optim.Adam(self.algo.parameters(), lr=self.cfg.solver.lr)
        self.batch = synthetic_batch(self.cfg, self.device)
        self.times: list[float] = []

    def step(self) -> float:
        start = time.perf_counter()
        out = self.algo(self.batch)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", action="append", required=True, metavar="FILE")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per config")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object per config")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="key=value")
    args = parser.parse_args(argv)
    try:
        runners = [Runner(path, args.opts) for path in args.config_file]
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for runner in runners:
        for _ in range(args.warmup):
            runner.step()
    for _ in range(args.iters):
        for runner in runners:
            runner.times.append(runner.step())
    base = statistics.median(runners[0].times)
    for runner in runners:
        s = statistics.median(runner.times)
        row = {
            "config": runner.name, "s_per_iter": s,
            "tasks_per_s": runner.cfg.solver.meta_batch / s, "ratio_to_first": s / base,
            "path": f"{runner.device.type}/{runner.algo.resolved_engine(runner.device)}",
            "threads": torch.get_num_threads(),
        }
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['config']:<24} {s:8.3f} s/iter  {row['tasks_per_s']:7.2f} tasks/s  "
                  f"x{row['ratio_to_first']:.3f}  ({row['path']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
