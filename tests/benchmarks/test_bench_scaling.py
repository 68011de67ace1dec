"""benchmarks/bench_scaling.py: one line per process count, tasks/s read from real torchrun runs."""

import json

import bench_scaling
from tests_helpers import ROOT


def test_reports_tasks_per_second_for_each_process_count(capsys):
    argv = ["--config-file", str(ROOT / "tests" / "configs" / "tiny.yaml"), "--procs", "1", "2", "--iters", "4",
            "--warmup", "1", "--cores", "2", "--json"]
    assert bench_scaling.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["procs"], r["omp_threads"], r["iters"]) for r in rows] == [(1, 2, 3), (2, 1, 3)]
    assert rows[0]["speedup"] == 1.0 and all(r["tasks_per_s"] > 0 for r in rows)
