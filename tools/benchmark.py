#!/usr/bin/env python
"""Time meta-training iterations of one or more configs side by side, with their peak memory.

    python tools/benchmark.py --config-file configs/maml_5shot.yaml \\
        --config-file configs/maml_lil_5shot.yaml --iters 10 [--higher] [--isolate] [--json] [key=value ...]

Each config's algorithm runs full meta-training steps (forward, backward, Adam step; the
trainer's own step from iteration 0, so the first warm-up step is a logging step) on synthetic
task batches of the configured shape, so no dataset is read. The rows are timed in interleaved
rounds after a warm-up, which spreads the machine's noise evenly over them; the table reports
the median seconds per iteration and tasks/s, and ratios to the first config. Overrides apply
to every config; overrides for one config alone follow its path in the same argument, e.g. to
compare two engines:

    python tools/benchmark.py --config-file configs/maml_1shot.yaml \\
        --config-file "configs/maml_1shot.yaml algorithm.execution.engine=vmap"

Baseline rows, built on the first config's inputs, network and weights (``tools/bench_rows.py``):

- the **naive baseline** (unless ``--no-baseline``): MAML written the plain way, a module
  clone per task, ``autograd.grad(create_graph=True)``, PyTorch's stock layers, the default
  memory layout, one backward of the mean loss (``x_naive``: > 1 means faster than it);
- ``--floor``: the query pass alone (each task's query forward at θ⁰ and its backward, in the
  engine's layout, no inner loop): the least work of any algorithm that trains on the query
  loss, hence a bound on how much faster than MAML a variant can be at that shape;
- ``--higher``: MAML with the ``higher`` library (``innerloop_ctx``), one task at a time with a
  backward per task, stock layers (``x_higher``: > 1 means faster than it); the package must be
  installed (``tools/higher_reference.py``).

**Memory.** ``peak_mem_mb`` is ``torch.cuda.max_memory_allocated`` over a row's timed steps on
GPU. On CPU it is peak RSS, which belongs to a process: in one process (the default) each row
reads the process's peak so far, an upper bound (``peak_scope: process so far``); with
``--isolate`` every row runs alone in a fresh process (``python tools/benchmark.py … --row N``),
whose whole peak RSS, from start-up to its last step, is the row's (``peak_scope: own
process``). Isolated rows are timed one after another, not interleaved: their times are less
comparable on a shared machine, so time in one process and read memory isolated.

``--malloc system|keep`` sets ``LIL_CPU_MALLOC`` for the run (isolated rows inherit it); the
CPU malloc setting is then made as ``tools/train_net.py`` makes it (:mod:`engine.cpu_memory`) and
applies to every row, baselines included.

``--json`` prints one object per row with ``tasks_per_s``, ``s_per_iter``, ``peak_mem_mb``,
``peak_scope``, ``path`` (device/engine/channels-last images), ``x_naive``, ``x_higher`` and
``cpu_malloc``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys

import torch

from lil_meta.engine.config import load_config
from lil_meta.engine.cpu_memory import keep_freed_memory
from lil_meta.engine.errors import UserInputError
from lil_meta.tools.bench_rows import NaiveMAML, QueryFloor, Runner
from lil_meta.tools.higher_reference import HigherMAML, import_higher

BASELINES = {"naive": NaiveMAML, "floor": QueryFloor, "higher": HigherMAML}


def _row_kinds(args) -> list[tuple[str, int]]:
    """``(kind, config index)`` of every row, in the order they are reported."""
    kinds = [("config", i) for i in range(len(args.config_file))]
    kinds += [(kind, 0) for kind, on in (("naive", not args.no_baseline), ("floor", args.floor),
                                         ("higher", args.higher)) if on]
    return kinds


def _runner(args, index: int) -> Runner:
    path, *own = args.config_file[index].split()
    return Runner(path, args.opts, tuple(own))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_rows(rows, warmup: int, iters: int) -> dict[int, float]:
    """Warm up, then time the rows in interleaved rounds; their peak memory (module doc)."""
    for row in rows:
        for _ in range(warmup):
            row.step()
    peaks: dict[int, float] = {}
    for _ in range(iters):
        for row in rows:
            if row.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(row.device)
            row.times.append(row.step())
            peak = (torch.cuda.max_memory_allocated(row.device) / 2**20 if row.device.type == "cuda"
                    else _peak_rss_mb())
            peaks[id(row)] = max(peaks.get(id(row), 0.0), peak)
    return peaks


def _measured(row, peak: float, scope: str) -> dict:
    return {"config": row.name, "times": row.times, "meta_batch": row.meta_batch, "path": row.path,
            "peak_mem_mb": round(peak, 1), "peak_scope": scope if row.device.type == "cpu" else "device",
            "cpu_malloc": keep_freed_memory()}


def _in_process(args) -> list[dict]:
    runners = [_runner(args, i) for i in range(len(args.config_file))]
    rows = runners + [BASELINES[kind](runners[0]) for kind, _ in _row_kinds(args) if kind != "config"]
    peaks = _time_rows(rows, args.warmup, args.iters)
    return [_measured(row, peaks[id(row)], "process so far") for row in rows]


def _one_row(args) -> int:
    """``--row N``: only row N, in this (fresh) process; one JSON line with its times and peak."""
    kind, index = _row_kinds(args)[args.row]
    row = _runner(args, index) if kind == "config" else BASELINES[kind](_runner(args, 0))
    peaks = _time_rows([row], args.warmup, args.iters)
    peak = peaks[id(row)] if row.device.type == "cuda" else _peak_rss_mb()
    print(json.dumps(_measured(row, peak, "own process")))
    return 0


class _RowFailed(Exception):
    """An isolated row's process failed; its exit status and stderr."""

    def __init__(self, status: int, stderr: str):
        super().__init__(stderr)
        self.status, self.stderr = status, stderr


def _isolated(args, argv: list[str]) -> list[dict]:
    """Every row in a fresh process of its own (``--row N``), one after another."""
    for index in range(len(args.config_file)):  # bad input: one line here, before any row runs
        path, *own = args.config_file[index].split()
        load_config(path, [*args.opts, *own])
    child = [a for a in argv if a != "--isolate"]
    rows = []
    for n in range(len(_row_kinds(args))):
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *child, "--row", str(n)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise _RowFailed(proc.returncode, proc.stderr)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def _report(rows: list[dict], malloc_note: str, as_json: bool) -> None:
    median = {r["config"]: statistics.median(r["times"]) for r in rows}
    base = median[rows[0]["config"]]
    naive = median.get(NaiveMAML.name, math.nan)
    higher = median.get(HigherMAML.name, math.nan)
    if not as_json:
        print(f"{malloc_note}; {torch.get_num_threads()} threads")
    for r in rows:
        s = median[r["config"]]
        row = {"config": r["config"], "s_per_iter": s, "tasks_per_s": r["meta_batch"] / s,
               "peak_mem_mb": r["peak_mem_mb"], "peak_scope": r["peak_scope"], "path": r["path"],
               "ratio_to_first": s / base, "x_naive": naive / s, "x_higher": higher / s,
               "threads": torch.get_num_threads(), "cpu_malloc": r["cpu_malloc"]}
        if as_json:
            print(json.dumps(row))
            continue
        vs = "".join(f"  x{row[k]:.2f} vs {name}" for k, name in (("x_naive", "naive"), ("x_higher", "higher"))
                     if not math.isnan(row[k]))
        print(f"{row['config']:<24} {s:8.3f} s/iter  {row['tasks_per_s']:7.2f} tasks/s  "
              f"x{row['ratio_to_first']:.3f} of first{vs}  {row['peak_mem_mb']:8.1f} MB peak "
              f"({row['peak_scope']})  ({row['path']})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", action="append", required=True, metavar="FILE")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per row")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object per row")
    parser.add_argument("--no-baseline", action="store_true", help="leave out the naive baseline")
    parser.add_argument("--floor", action="store_true",
                        help="also time the query pass alone (no inner loop): the bound on speed-ups")
    parser.add_argument("--higher", action="store_true",
                        help="also MAML with the higher library, one task at a time (needs 'higher' installed)")
    parser.add_argument("--isolate", action="store_true",
                        help="run every row in a fresh process of its own: its own peak RSS on CPU")
    parser.add_argument("--malloc", choices=("system", "keep"),
                        help="LIL_CPU_MALLOC for this run: glibc's defaults, or freed memory kept (the default)")
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)  # --isolate's child: this row only
    parser.add_argument("opts", nargs="*", metavar="key=value")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_intermixed_args(argv)
    if args.malloc:
        os.environ["LIL_CPU_MALLOC"] = args.malloc
    malloc_note = keep_freed_memory()  # as tools/train_net.py does; applies to the baselines too
    try:
        if args.higher:
            import_higher()
        if args.row is not None:
            return _one_row(args)
        rows = _isolated(args, argv) if args.isolate else _in_process(args)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except _RowFailed as failed:
        sys.stderr.write(failed.stderr)
        return failed.status
    _report(rows, malloc_note, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
