"""The functions the launch tests run in spawned processes (``torch.multiprocessing.spawn``).

They live in a module of their own, on the test helpers' path, because a spawned process
imports its target by module name: a test module, named by pytest's importlib mode, is not
importable there.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine import runner
from lil_meta.engine.defaults import default_argument_parser
from lil_meta.engine.launch import RankSlice, World, average_gradients, gather_lists
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4
from tests_helpers import ROOT, tiny_batch


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
    algo = GBML(model, inner_lr=0.4, inner_steps=2, execution={"engine": "loop"})
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


def _run_worker(rank: int, init_file: str, output_dir: str, out: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    args = default_argument_parser().parse_args([
        "--config-file", str(ROOT / "tests" / "configs" / "tiny.yaml"), "solver.max_iter=2",
        "solver.meta_batch=2", "test.tasks=4", "test.val_tasks=2", "--output-dir", output_dir])
    runner.run(args)
    out[rank] = dist.is_initialized()


def _presence_worker(rank: int, init_file: str, out: dict) -> None:
    """Whether the processes agree on which parameters have a gradient: first both have
    gradients for both tensors, then process 1 has none for the second."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        world = World(rank, 2)
        params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
        verdicts = []
        for second in (True, rank == 0):
            params[0].grad = torch.full((3,), float(rank + 1))
            params[1].grad = torch.ones(2) if second else None
            verdicts.append(bool(average_gradients(params, world)))
        out[rank] = (verdicts, params[0].grad.tolist())
        dist.barrier()
    finally:
        dist.destroy_process_group()
