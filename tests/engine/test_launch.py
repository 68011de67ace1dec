"""Data parallelism over the tasks of a meta-batch (engine/launch.py): the launch read from the
environment, two gloo processes against one process on the same tasks, leaving the process group
at the end of a run, and torchrun end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine import runner
from lil_meta.engine.defaults import default_argument_parser
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.launch import (
    RankSlice,
    World,
    average_gradients,
    check_meta_batch,
    gather_lists,
    world_from_env,
)
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4
from tests_helpers import ROOT, tiny_batch


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


class FixedSampler:
    def __init__(self, batch):
        self.batch = batch

    def next_batch(self):
        return self.batch


def model_and_batch():
    torch.manual_seed(0)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=6).double()
    batch = tiny_batch(tasks=4, size=16, seed=2)
    return model, TaskBatch(*(t.double() if t.is_floating_point() else t for t in batch))


def meta_gradient(world: World) -> list[torch.Tensor]:
    model, batch = model_and_batch()
    algo = GBML(model, inner_lr=0.4, inner_steps=2, engine="loop")
    algo(RankSlice(FixedSampler(batch), world).next_batch())["loss"].backward()
    params = list(algo.parameters())
    average_gradients(params, world)
    return [p.grad.clone() for p in params]


def _worker(rank: int, init_file: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        world = World(rank, 2)
        grads = meta_gradient(world)
        gathered = gather_lists([rank * 10, rank * 10 + 1], world)
        if rank == 0:
            out["grads"], out["gathered"] = grads, gathered
        dist.barrier()  # neither process tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


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


def _run_worker(rank: int, init_file: str, output_dir: str, out: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    args = default_argument_parser().parse_args([
        "--config-file", str(ROOT / "tests" / "configs" / "tiny.yaml"), "solver.max_iter=2",
        "solver.meta_batch=2", "test.tasks=4", "test.val_tasks=2", "--output-dir", output_dir])
    runner.run(args)
    out[rank] = dist.is_initialized()


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
