"""The timed sections of the GPU session (``benchmarks/gpu_session.py``): S2 (Conv4 speed and memory
against ``higher`` and the naive loop), S3 (ResNet-12), S5 (fp32 against tf32 against bf16).

Within a group, rows are stepped in interleaved rounds after their warm-up steps, in one
process, so the machine's drift spreads evenly over them; each row's time is its median step
(CUDA-synchronised), its memory the peak ``max_memory_allocated`` / ``max_memory_reserved`` over
its own timed steps (reset before each). A row that runs out of memory is reported as such and
leaves its group. Every record is one JSON object (``emit``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from lil_meta import CONFIGS
from lil_meta.tools.bench_rows import NaiveMAML, Runner
from lil_meta.tools.higher_reference import HigherMAML, import_higher

Emit = Callable[[dict], None]


def _shape(dry_run: bool, image_size: int = 84) -> list[str]:
    if dry_run:
        return ["device=cpu", "data.image_size=16", "data.channels=3", "model.backbone.hidden=8"]
    return ["device=cuda", f"data.image_size={image_size}", "data.channels=3"]


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peaks(device: torch.device) -> tuple[float | None, float | None]:
    if device.type != "cuda":
        return None, None
    return torch.cuda.max_memory_allocated(device) / 2**20, torch.cuda.max_memory_reserved(device) / 2**20


def time_group(rows: dict[str, object], warmup: int, iters: int) -> dict[str, dict]:
    """``{name: {"s_per_iter", "peak_alloc_mb", "peak_reserved_mb"} | {"error": ...}}``."""
    alive, result = dict(rows), {}
    for name, row in list(alive.items()):
        try:
            for _ in range(warmup):
                row.step()
        except torch.OutOfMemoryError:
            result[name] = {"error": "out of memory"}
            del alive[name]
            _release(row)
    times: dict[str, list[float]] = {name: [] for name in alive}
    peaks: dict[str, tuple] = {}
    for _ in range(iters):
        for name, row in list(alive.items()):
            _peak_reset(row.device)
            try:
                times[name].append(row.step())
            except torch.OutOfMemoryError:
                result[name] = {"error": "out of memory"}
                del alive[name]
                _release(row)
                continue
            alloc, reserved = _peaks(row.device)
            if alloc is not None:
                seen = peaks.get(name, (0.0, 0.0))
                peaks[name] = (max(seen[0], alloc), max(seen[1], reserved))
    for name in alive:
        alloc, reserved = peaks.get(name, (None, None))
        result[name] = {"s_per_iter": statistics.median(times[name]), "peak_alloc_mb": alloc,
                        "peak_reserved_mb": reserved}
    return result


def _release(row) -> None:
    for attr in ("algo", "model", "trainer", "optimizer"):
        if hasattr(row, attr):
            setattr(row, attr, None)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _runner(config: str, shape: list[str], *own: str) -> Runner:
    return Runner(str(CONFIGS / config), shape, own)


def _record(emit: Emit, section: str, group: dict, measured: dict[str, dict], rows: dict) -> None:
    for name, values in measured.items():
        row = rows[name]
        record = {"section": section, **group, "row": name, **values, "path": getattr(row, "path", "")}
        if "s_per_iter" in values:
            record["tasks_per_s"] = group["meta_batch"] / values["s_per_iter"]
            if values.get("peak_alloc_mb") is not None:
                record["peak_alloc_mb_per_task"] = values["peak_alloc_mb"] / group["meta_batch"]
        chunk = getattr(row, "chunk", None)
        if chunk is not None:
            record["task_chunk_auto"] = chunk
        emit(record)


def _have_higher() -> bool:
    try:
        import_higher()
    except Exception:  # noqa: BLE001 - absent or broken: the row is left out and said so
        return False
    return True


def speed_conv4(emit: Emit, dry_run: bool) -> None:
    """S2: Conv4 84×84, 5-way 1- and 5-shot, meta-batch 4, 16, 32 (dry run: 2, 4 at 16×16)."""
    higher = _have_higher()
    if not higher:
        emit({"section": "S2", "note": "higher is not installed: its rows are left out"})
    warmup, iters = (1, 2) if dry_run else (2, 3)
    for shot in (1, 5):
        for mb in ((2,) if dry_run else (4, 16, 32)):
            shape = _shape(dry_run) + [f"data.shot={shot}", f"solver.meta_batch={mb}"]
            base = f"maml_{shot}shot.yaml"
            rows = {
                "maml vmap": _runner(base, shape, "algorithm.execution.engine=vmap"),
                "maml loop": _runner(base, shape, "algorithm.execution.engine=loop"),
                "maml_lil vmap": _runner(f"maml_lil_{shot}shot.yaml", shape, "algorithm.execution.engine=vmap"),
                "fomaml vmap": _runner(f"fomaml_{shot}shot.yaml", shape, "algorithm.execution.engine=vmap"),
                "anil vmap": _runner(f"anil_{shot}shot.yaml", shape, "algorithm.execution.engine=vmap"),
            }
            if higher:
                rows["higher"] = HigherMAML(rows["maml vmap"])
            if mb == (2 if dry_run else 32):
                rows["naive"] = NaiveMAML(rows["maml vmap"])
            measured = time_group(rows, warmup, iters)
            _record(emit, "S2", {"shot": shot, "meta_batch": mb}, measured, rows)
            del rows
            _release(None)


def speed_resnet12(emit: Emit, dry_run: bool) -> None:
    """S3: ResNet-12 (84×84; dry run 16×16 with narrow widths), 1- and 5-shot, meta-batch 4
    against ``higher``, then the largest meta-batch of 8, 16, 32 whose step fits."""
    higher = _have_higher()
    widths = ["model.backbone.widths=[4,8,8,8]"] if dry_run else []
    shape = [s for s in _shape(dry_run) if "hidden" not in s] + widths
    for shot in (1,) if dry_run else (1, 5):
        group = shape + [f"data.shot={shot}"]
        rows = {"maml vmap": _runner(f"maml_resnet12_{shot}shot.yaml", group + ["solver.meta_batch=4"],
                                     "algorithm.execution.engine=vmap")}
        if higher:
            rows["higher"] = HigherMAML(rows["maml vmap"])
        measured = time_group(rows, 1, 1 if dry_run else 3)
        _record(emit, "S3", {"shot": shot, "meta_batch": 4, "backbone": "resnet12"}, measured, rows)
        del rows
        _release(None)
        for mb in ((8,) if dry_run else (8, 16, 32)):
            row = {"maml vmap": _runner(f"maml_resnet12_{shot}shot.yaml", group + [f"solver.meta_batch={mb}",
                                                                                     "solver.task_chunk=0"],
                                        "algorithm.execution.engine=vmap")}
            measured = time_group(row, 1, 1 if dry_run else 2)
            _record(emit, "S3", {"shot": shot, "meta_batch": mb, "backbone": "resnet12"}, measured, row)
            del row
            _release(None)
            if "error" in measured["maml vmap"]:
                break


def speed_precision(emit: Emit, dry_run: bool) -> None:
    """S5: second-order MAML (vmap) at meta-batch 32 (dry run 4), 1- and 5-shot, under each
    precision the device has, interleaved."""
    cuda = not dry_run
    precisions = ["fp32", "tf32", "bf16"] if cuda else ["fp32", "bf16"]
    if cuda and not torch.cuda.is_bf16_supported():
        precisions.remove("bf16")
    mb = 4 if dry_run else 32
    for shot in (1, 5):
        shape = _shape(dry_run) + [f"data.shot={shot}", f"solver.meta_batch={mb}"]
        rows = {p: _runner(f"maml_{shot}shot.yaml", shape, "algorithm.execution.engine=vmap", f"solver.precision={p}")
                for p in precisions}
        measured = time_group(rows, 1, 2 if dry_run else 3)
        _record(emit, "S5", {"shot": shot, "meta_batch": mb}, measured, rows)
        del rows
        _release(None)


SECTIONS = {"S2": speed_conv4, "S3": speed_resnet12, "S5": speed_precision}
