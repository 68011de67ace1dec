#!/usr/bin/env python
"""Training throughput (tasks/s) against the number of processes, through torchrun.

    python benchmarks/bench_scaling.py --config-file configs/maml_5shot.yaml --procs 1 2 --iters 30

For each process count N, runs ``torchrun --standalone --nproc_per_node N tools/train_net.py``
on the config for ``--iters`` iterations (the meta-batch is ``solver.meta_batch``, split over
the processes; pass ``solver.meta_batch=…`` to change it) and reads ``tasks_per_s`` from the
run's ``metrics.jsonl``: the median over the iterations after ``--warmup``. Each process gets
``OMP_NUM_THREADS = cores / N`` on CPU. The runs go one after another in this one invocation,
so the ratios compare like with like; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(config: str, procs: int, iters: int, warmup: int, opts: list[str], cores: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               str(ROOT / "tools" / "train_net.py"), "--config-file", config, "--output-dir", str(out),
               f"solver.max_iter={iters}", "log.period=1", "test.tasks=25", "test.val_tasks=25",
               f"test.eval_period={10 * iters}", f"solver.checkpoint_period={10 * iters}", *opts]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // procs))}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"error: {procs} processes failed:\n{proc.stderr[-2000:]}")
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [m["tasks_per_s"] for m in lines if m["iter"] > warmup]
    return {"procs": procs, "tasks_per_s": statistics.median(rates), "iters": len(rates),
            "omp_threads": max(1, cores // procs)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", action="store_true", help="one JSON object per process count")
    p.add_argument("opts", nargs="*", metavar="key=value")
    args = p.parse_intermixed_args(argv)
    results = [measure(args.config_file, n, args.iters, args.warmup, args.opts, args.cores) for n in args.procs]
    base = results[0]["tasks_per_s"]
    for r in results:
        r["speedup"] = r["tasks_per_s"] / base
        print(json.dumps(r) if args.json else
              f"{r['procs']} process(es) x {r['omp_threads']} thread(s): {r['tasks_per_s']:7.2f} tasks/s"
              f"  x{r['speedup']:.2f}  (median of {r['iters']} iterations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
