#!/usr/bin/env python
"""BatchNorm under the vmap engine: the fused form (tasks folded into channels) against the
elementary form it replaced, and the per-task loop, timed side by side in one process.

    python benchmarks/bench_vmap_bn.py [--config-file configs/maml_1shot.yaml] [--iters 5] [key=value ...]

Each row is a full meta-training step of the config (``tools/bench_rows.py``'s ``Runner``):
``vmap/fused`` the engine as it is, ``vmap/elementary`` the same with every
:class:`TaskBatchNorm2d` computing its statistics from elementary ops (mean, var, rsqrt,
scale, shift, each with autograd's double backward), ``loop`` the per-task loop. Rows are
timed in interleaved rounds after two warm-up steps each; the table gives the median seconds
per iteration and the ratio to ``vmap/elementary``. Prints one JSON object per row with
``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from lil_meta.engine.cpu_memory import keep_freed_memory
from lil_meta.models.backbones.layers import TaskBatchNorm2d
from lil_meta.tools.bench_rows import Runner


class ElementaryBatchNorm2d(TaskBatchNorm2d):
    """Batch statistics from elementary ops, differentiated by autograd (the form the vmap
    engine ran before the fused one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        scale = self.weight[:, None, None] * torch.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias[:, None, None]


def elementary(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every :class:`TaskBatchNorm2d` computing in the elementary form."""
    for module in model.modules():
        if type(module) is TaskBatchNorm2d:
            module.__class__ = ElementaryBatchNorm2d
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/maml_1shot.yaml")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("opts", nargs="*")
    args = parser.parse_args(argv)
    malloc = keep_freed_memory()  # as tools/train_net.py does (engine/cpu_memory.py)
    rows = {
        "vmap/fused": Runner(args.config_file, args.opts, ("algorithm.execution.engine=vmap",)),
        "vmap/elementary": Runner(args.config_file, args.opts, ("algorithm.execution.engine=vmap",)),
        "loop": Runner(args.config_file, args.opts, ("algorithm.execution.engine=loop",)),
    }
    elementary(rows["vmap/elementary"].algo.model)
    for row in rows.values():
        for _ in range(2):
            row.step()
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.iters):
        for name, row in rows.items():
            times[name].append(row.step())
    base = statistics.median(times["vmap/elementary"])
    for name, values in times.items():
        median = statistics.median(values)
        record = {"row": name, "s_per_iter": median, "vs_elementary": median / base, "iters": len(values),
                  "threads": torch.get_num_threads(), "device": str(rows[name].device), "cpu_malloc": malloc}
        print(json.dumps(record) if args.json else
              f"{name:16s} {median:8.3f} s/iter  {median / base:6.3f}x vmap/elementary", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
