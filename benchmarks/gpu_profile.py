"""S4 of the GPU session (``benchmarks/gpu_session.py``): where a training step's time goes on the GPU,
and whether a non-logging step waits on the host.

For second-order MAML (vmap engine) at meta-batch 4 1-shot and 32 5-shot: two non-logging
steps of the real trainer under ``torch.profiler`` — the GPU busy fraction (the union of the
kernels' intervals over the wall time of the two steps, profiler overhead included), kernels
per step and the top kernels by GPU time; then 20 non-logging steps under
``torch.cuda.set_sync_debug_mode("error")``, which raises at the first operation that makes the
host wait for the GPU. A dry run (CPU) profiles the same steps at 16×16 and says the GPU parts
do not apply.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

import torch
from torch.autograd import DeviceType

from lil_meta import CONFIGS
from lil_meta.tools.bench_rows import Runner

Emit = Callable[[dict], None]
LOGGING_PERIOD = 10_000  # no logging step in the window: iterations 1.. are not multiples of it


def _runner(shot: int, meta_batch: int, dry_run: bool) -> Runner:
    shape = (["device=cpu", "data.image_size=16", "model.backbone.hidden=8"] if dry_run
             else ["device=cuda", "data.image_size=84"])
    return Runner(str(CONFIGS / f"maml_{shot}shot.yaml"),
                  [*shape, "data.channels=3", f"data.shot={shot}", f"solver.meta_batch={meta_batch}"],
                  ("algorithm.execution.engine=vmap", f"algorithm.diagnostics.metrics_period={LOGGING_PERIOD}"))


def _steps(row: Runner, n: int) -> None:
    for _ in range(n):
        row.trainer.run_step()
        row.trainer.iter += 1


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


def _device_time(avg) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total", "device_time_total", "cuda_time_total"):
        if hasattr(avg, attr):
            return float(getattr(avg, attr))
    return 0.0


def profile_steps(row: Runner, cuda: bool) -> dict:
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        _steps(row, 2)
        if cuda:
            torch.cuda.synchronize()
        wall_us = (time.perf_counter() - start) * 1e6
    result = {"wall_ms_per_step": wall_us / 2e3}
    if not cuda:
        result["gpu"] = "not applicable (CPU dry run)"
        return result
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy = _union_us([(e.time_range.start, e.time_range.end) for e in kernels])
    averages = [a for a in prof.key_averages() if a.device_type == DeviceType.CUDA]
    top = sorted(averages, key=_device_time, reverse=True)[:10]
    result.update(gpu_busy=busy / wall_us, kernels_per_step=len(kernels) / 2,
                  top_kernels=[{"name": a.key[:120], "ms_per_step": _device_time(a) / 2e3, "calls_per_step": a.count / 2}
                               for a in top])
    return result


def sync_debug(row: Runner, steps: int = 20) -> dict:
    """``steps`` non-logging steps with any host wait an error; where it happened, if one did."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _steps(row, steps)
    except RuntimeError as exc:
        where = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_tb(exc.__traceback__)][-4:]
        return {"sync_free_steps": False, "error": str(exc).splitlines()[0], "where": where}
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
    return {"sync_free_steps": True, "steps": steps}


def profile(emit: Emit, dry_run: bool) -> None:
    cuda = not dry_run
    for shot, mb in ((1, 2), (5, 4)) if dry_run else ((1, 4), (5, 32)):
        row = _runner(shot, mb, dry_run)
        row.trainer.iter = 1
        _steps(row, 2)  # warm-up: kernels compiled, caches filled
        record = {"section": "S4", "shot": shot, "meta_batch": mb, **profile_steps(row, cuda)}
        record.update(sync_debug(row) if cuda else {"sync_debug": "not applicable (CPU dry run)"})
        emit(record)
        del row
        if cuda:
            torch.cuda.empty_cache()


SECTIONS = {"S4": profile}
