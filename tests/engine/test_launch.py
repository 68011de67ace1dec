"""Data parallelism over the tasks of a meta-batch (engine/launch.py): the launch read from the
environment, two gloo processes against one process on the same tasks, leaving the process group
at the end of a run, and torchrun end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from launch_workers import _presence_worker, _run_worker, _worker, meta_gradient
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.launch import (
    World,
    check_meta_batch,
    world_from_env,
)
from tests_helpers import ROOT


def test_world_comes_from_torchrun_or_slurm_variables():
    assert world_from_env({}) == World(0, 1, 0)
    assert world_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == World(3, 8, 1)
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "1234",
           "SLURM_JOB_NODELIST": "node[03-04]"}
    assert world_from_env(env) == World(5, 8, 1)
    assert env["MASTER_ADDR"] == "node03" and env["MASTER_PORT"] == str(20000 + 1234)
    assert world_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == World()  # one task: no group


def test_meta_batch_must_split_over_the_processes():
    assert check_meta_batch(8, World(0, 4)) == 2
    with pytest.raises(ConfigError, match="solver.meta_batch: 6 tasks do not split over 4 processes"):
        check_meta_batch(6, World(0, 4))


def test_two_processes_give_the_one_process_meta_gradient(tmp_path):
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
        grads, gathered = list(out["grads"]), list(out["gathered"])
    single = meta_gradient(World())
    assert gathered == [0, 1, 10, 11]
    for g, s in zip(grads, single, strict=True):
        torch.testing.assert_close(g, s, rtol=1e-6, atol=1e-9)
    assert max(s.abs().max().item() for s in single) > 1e-3  # a gradient worth comparing


def test_the_processes_check_on_the_device_that_the_same_parameters_had_gradients(tmp_path):
    """No host read: the agreement is a device flag the step's finiteness check folds in."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_presence_worker, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        verdicts, averaged = results[rank]
        assert verdicts == [True, False]
        assert averaged == [1.5, 1.5, 1.5]


def test_a_finished_run_leaves_the_process_group(tmp_path):
    """A process that exits with a live gloo group can abort in the interpreter's teardown
    (SIGABRT on one rank after a run that finished), so :func:`engine.runner.run` leaves it."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_run_worker, args=(str(tmp_path / "init"), str(tmp_path / "run"), out), nprocs=2, join=True)
        assert dict(out) == {0: False, 1: False}


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_torchrun_two_processes_end_with_the_single_process_weights(tmp_path):
    tiny = ROOT / "tests" / "configs" / "tiny.yaml"
    common = ["--config-file", str(tiny), "solver.max_iter=4", "solver.meta_batch=2", "test.tasks=10"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    script = str(ROOT / "tools" / "train_net.py")
    for cmd in ([sys.executable, script, *common, "--output-dir", str(single)],
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 script, *common, "--output-dir", str(multi)]):
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    a, b = weights(single / "model_final.pth"), weights(multi / "model_final.pth")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (single, multi))
    assert rb["test_tasks"] == ra["test_tasks"] == 10
    assert abs(ra["test_acc"] - rb["test_acc"]) < 1e-6
    assert len((multi / "metrics.jsonl").read_text().splitlines()) == 4  # one writer
