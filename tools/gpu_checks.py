#!/usr/bin/env python
"""GPU checks of the engine, printed as JSON lines (run on a CUDA machine; needs no dataset).

1. Correctness on CUDA: MAML+LIL meta-gradient with the vmap engine vs the per-task loop, and
   with the fused Triton trajectory norms vs the torch path (fp64 and fp32, Conv4 84×84,
   5-way 1-shot).
2. Speed: seconds per meta-training iteration of MAML, FOMAML and MAML+LIL under both engines
   and both norm backends, timed side by side in this one process (CUDA-synchronised, warm-up
   excluded), with the LIL overhead ratio.

    python tools/gpu_checks.py [--iters 20]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import torch

import lil_meta.engine.inner_loop as inner_loop
from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.kernels import group_norms
from lil_meta.losses import build_losses
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4

LIL = [{"name": "cross_entropy"}, {"name": "phase", "weight": 0.1}, {"name": "pseudo_amplitude", "weight": 0.01}]
CE = LIL[:1]


def make_batch(device, tasks=4, way=5, shot=1, query=15, size=84, seed=0):
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(tasks, way * shot, 3, size, size, generator=g)
    qx = torch.rand(tasks, way * query, 3, size, size, generator=g)
    sy = torch.arange(way).repeat_interleave(shot).repeat(tasks, 1)
    qy = torch.arange(way).repeat_interleave(query).repeat(tasks, 1)
    return TaskBatch(sx, sy, qx, qy).to(device)


def use_norm_backend(name: str) -> None:
    inner_loop.group_norms = functools.partial(group_norms, backend=name)


def make_algo(device, losses, engine, first_order=False):
    torch.manual_seed(0)
    model = Conv4(num_classes=5, in_channels=3, image_size=84).to(device)
    return GBML(model, inner_lr=0.5, inner_steps=3, engine=engine, first_order=first_order,
                losses=build_losses(losses), metrics_period=0).to(device)


def meta_grad(algo, batch):
    algo.zero_grad(set_to_none=True)
    out = algo(batch)
    out["loss"].backward()
    return out, torch.cat([p.grad.flatten() for p in algo.parameters()])


def correctness(device, dtype) -> None:
    batch = make_batch(device)
    batch = TaskBatch(batch.support_x.to(dtype), batch.support_y, batch.query_x.to(dtype), batch.query_y)
    tolerance = 1e-9 if dtype == torch.float64 else 2e-2  # fp32: the 3-step inner loop amplifies rounding
    results = {}
    for engine in ("loop", "vmap"):
        for backend in ("torch", "triton"):
            use_norm_backend(backend)
            results[(engine, backend)] = meta_grad(make_algo(device, LIL, engine).to(dtype), batch)
    ref_out, ref_grad = results[("loop", "torch")]
    for key, (out, grad) in results.items():
        rel = ((grad - ref_grad).norm() / ref_grad.norm()).item()
        print(json.dumps({"check": "meta_grad_vs_loop_torch", "dtype": str(dtype), "engine": key[0],
                          "norms": key[1], "rel_err": rel, "traj_len": out["traj_len"].item(),
                          "ref_traj_len": ref_out["traj_len"].item(), "ok": rel < tolerance}), flush=True)


def seconds_per_iter(algo, batch, iters):
    for _ in range(3):
        meta_grad(algo, batch)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        meta_grad(algo, batch)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def speed(device, iters) -> None:
    batch = make_batch(device)
    rows = {}
    for backend in ("torch", "triton"):
        use_norm_backend(backend)
        for engine in ("loop", "vmap"):
            for name, losses, fo in (("maml", CE, False), ("fomaml", CE, True), ("maml_lil", LIL, False)):
                if name != "maml_lil" and backend == "triton":
                    continue
                s = seconds_per_iter(make_algo(device, losses, engine, fo), batch, iters)
                rows[(name, engine, backend)] = s
                print(json.dumps({"bench": name, "engine": engine, "norms": backend, "s_per_iter": s,
                                  "tasks_per_s": batch.num_tasks / s}), flush=True)
    for engine in ("loop", "vmap"):
        for backend in ("torch", "triton"):
            print(json.dumps({"ratio": "maml_lil/maml", "engine": engine, "norms": backend,
                              "value": rows[("maml_lil", engine, backend)] / rows[("maml", engine, "torch")]}))
        print(json.dumps({"ratio": "maml/fomaml", "engine": engine,
                          "value": rows[("maml", engine, "torch")] / rows[("fomaml", engine, "torch")]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    correctness(device, torch.float64)
    correctness(device, torch.float32)
    speed(device, args.iters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
