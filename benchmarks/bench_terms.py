#!/usr/bin/env python
"""Where an outer-loss term's time goes: the part of a training step spent in each term's
per-task work, and in the extra inner trajectories it asks for.

    python benchmarks/bench_terms.py --config-file configs/maml_shot_5shot.yaml --iters 2 --warmup 1 \\
        model.backbone.hidden=32

Runs the trainer's own step on synthetic tasks, as ``tools/benchmark.py`` does (same batches,
same overrides), and times, inside each step, every term's ``OuterLoss.per_task`` (e.g. SHOT's
reference trajectory and the query forward at its end, or the one-step form's forward at θ₁),
and within that the calls to ``AdaptedTask.retrace`` (another trajectory on the support set).
The rest of a term's ``per_task`` is its query work. Only the forward side is split: a term's
share of the backward pass is in the step, not in its row (the difference against the config
without the term, from ``tools/benchmark.py`` in one process, is the whole cost). Medians over
``--iters`` steps after ``--warmup``; ``--json`` prints one object per term.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from lil_meta.engine.adapted_task import AdaptedTask
from lil_meta.engine.cpu_memory import keep_freed_memory
from lil_meta.engine.errors import UserInputError
from lil_meta.tools.bench_rows import Runner, core


class _Clock:
    """Seconds spent in each term's ``per_task`` and in ``retrace`` calls made from it."""

    def __init__(self):
        self.term: dict[str, float] = {}
        self.retrace: dict[str, float] = {}
        self.inside: str | None = None

    def reset(self):
        self.term = dict.fromkeys(self.term, 0.0)
        self.retrace = dict.fromkeys(self.retrace, 0.0)

    def wrap_term(self, term):
        original, key = term.per_task, term.key

        def per_task(task):
            self.inside, start = key, time.perf_counter()
            try:
                return original(task)
            finally:
                self.term[key] = self.term.get(key, 0.0) + time.perf_counter() - start
                self.inside = None

        self.term.setdefault(key, 0.0)
        self.retrace.setdefault(key, 0.0)
        term.per_task = per_task  # an instance attribute: the class still says it asks per task

    def wrap_retrace(self):
        original = AdaptedTask.retrace

        def retrace(task, **kwargs):
            start = time.perf_counter()
            try:
                return original(task, **kwargs)
            finally:
                if self.inside is not None:
                    self.retrace[self.inside] += time.perf_counter() - start

        AdaptedTask.retrace = retrace
        return lambda: setattr(AdaptedTask, "retrace", original)


def measure(runner: Runner, iters: int, warmup: int) -> list[dict]:
    """One row per term that asks for per-task work: median step, term and retrace seconds."""
    clock = _Clock()
    terms = [t for t in core(runner.algo).losses if t.asks_per_task]
    for term in terms:
        clock.wrap_term(term)
    restore = clock.wrap_retrace()
    try:
        for _ in range(warmup):
            runner.step()
        steps, spent = [], []
        for _ in range(iters):
            clock.reset()
            steps.append(runner.step())
            spent.append((dict(clock.term), dict(clock.retrace)))
    finally:
        restore()
    step = statistics.median(steps)
    rows = []
    for term in terms:
        inside = statistics.median(s[0][term.key] for s in spent)
        retrace = statistics.median(s[1][term.key] for s in spent)
        rows.append({"config": runner.name, "term": term.key, "s_per_iter": step, "term_s": inside,
                     "retrace_s": retrace, "rest_s": inside - retrace, "term_share": inside / step,
                     "retrace_share": retrace / step})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", action="append", required=True, metavar="FILE")
    parser.add_argument("--iters", type=int, default=3, help="timed steps per config")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object per term")
    parser.add_argument("opts", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    note = keep_freed_memory()
    try:
        runners = [Runner(path, args.opts, tuple(own)) for path, *own in (s.split() for s in args.config_file)]
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.json:
        print(note)
    for runner in runners:
        rows = measure(runner, args.iters, args.warmup)
        if not rows:
            print(f"{runner.name}: no term with per-task work", file=sys.stderr)
        for row in rows:
            if args.json:
                print(json.dumps(row))
            else:
                print(f"{row['config']:<28} {row['term']:<16} step {row['s_per_iter']:.3f} s; term {row['term_s']:.3f} s "
                      f"({row['term_share']:.0%}): retrace {row['retrace_s']:.3f} s ({row['retrace_share']:.0%}), "
                      f"the rest {row['rest_s']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
