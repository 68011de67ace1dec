"""Processes of one run: a single process, ``torchrun`` workers, or the tasks of a SLURM job.

Data parallelism over the *tasks* of a meta-batch. With W processes and meta-batch B (a multiple
of W), every process draws the same B tasks from the same seeded sampler — drawing is cheap
tensor indexing — and keeps its own slice of B/W (:class:`RankSlice`), so rank r trains on tasks
r·B/W … (r+1)·B/W − 1 of each batch. Each process computes the mean outer loss over its slice;
:func:`average_gradients` all-reduces the meta-gradients once per iteration (one flat buffer)
and divides by W, which gives the gradient of the mean over all B tasks. The run therefore
sees exactly the tasks a single process would see, whatever W is, and ends with the same
weights up to floating-point summation order. Evaluation splits the task list across the
processes and gathers the per-task accuracies (:func:`gather_lists`). Only rank 0 writes.

:func:`world_from_env` reads the launch from the environment, with nothing to change in the
config: ``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (+ ``MASTER_ADDR``/``PORT``);
a SLURM job step sets ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` and the master is the
first host of ``SLURM_JOB_NODELIST``; otherwise it is one process. NCCL on GPUs, gloo on CPUs.

**Faults.** The process group waits ``launch.timeout_s`` for a collective (gloo's timeout on
CPUs, NCCL's watchdog on GPUs). Every collective here runs under :func:`_collective`: when one
fails — a peer that stopped answering (the timeout) or a peer that is gone (its connection
closed) — this process asks the run's store which processes still answer
(:meth:`Watch.silent`) and raises :class:`CollectiveFailed`, which the run turns into one line
naming the iteration, the collective and the process (:class:`engine.errors.ProcessGroupError`).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from lil_meta.engine.errors import ConfigError

__all__ = ["World", "world_from_env", "init_distributed", "close_distributed", "average_gradients",
           "average_scalars", "gather_lists", "RankSlice", "CollectiveFailed", "Watch"]


class Watch:
    """The run's store and timeout, a count of this process's collectives (every process makes
    the same calls in the same order, so the count names a collective across them), and the
    group for the host's own agreements (:func:`any_process`): gloo beside an NCCL group, so
    that they never wait on a GPU."""

    def __init__(self, store: Any, timeout_s: float, control_group: Any = None) -> None:
        self.store, self.timeout_s, self.calls = store, float(timeout_s), 0
        self.control_group = control_group

    def silent(self, rank: int, size: int, call: int, wait_s: float = 3.0) -> list[int] | None:
        """The processes that do not say, within ``wait_s``, that they too saw collective
        ``call`` fail; ``None`` when the store itself does not answer (its host may be the
        process that stopped). Runs on a thread, so a store that hangs cannot hang this one."""
        result: dict[str, list[int]] = {}

        def ask() -> None:
            key = f"lil/failed/{call}"
            self.store.set_timeout(timedelta(seconds=wait_s + 2))
            self.store.set(f"{key}/{rank}", "1")
            deadline = time.monotonic() + wait_s
            while True:
                answered = [r for r in range(size) if self.store.check([f"{key}/{r}"])]
                if len(answered) == size or time.monotonic() > deadline:
                    result["silent"] = [r for r in range(size) if r not in answered]
                    return
                time.sleep(0.1)

        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        thread.join(wait_s + 5)
        return result.get("silent")


class CollectiveFailed(RuntimeError):
    """A collective that did not complete: which one, whether it timed out (a process stopped
    answering) or lost a connection (a process is gone), and the processes that did not answer
    when asked afterwards (``None``: unknown)."""

    def __init__(self, collective: str, cause: BaseException, timed_out: bool, silent: list[int] | None,
                 size: int, timeout_s: float) -> None:
        self.collective, self.timed_out, self.silent, self.size = collective, timed_out, silent, size
        self.timeout_s = timeout_s
        self.cause = _first_words(cause)
        super().__init__(self.describe())

    def describe(self) -> str:
        who = (("process " if len(self.silent or []) == 1 else "processes ") + ", ".join(map(str, self.silent or [])) + f" of {self.size}") if self.silent else \
            "another process (which one is unknown)"
        if self.timed_out:
            return (f"the {self.collective} waited launch.timeout_s={self.timeout_s:g} s: {who} did not answer")
        return f"{who} lost during the {self.collective} ({self.cause})"


def _first_words(exc: BaseException) -> str:
    """An error of gloo or NCCL without its source location, to its first sentence:
    ``Connection closed by peer [127.0.0.1]:19346``."""
    text = re.sub(r"\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", str(exc).splitlines()[0] if str(exc) else "")
    return (text.split(". ")[0].strip() or type(exc).__name__)[:160]


def _timed_out(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


@contextmanager
def _collective(name: str, world: World):
    """Run a collective; its failure becomes :class:`CollectiveFailed` (module doc)."""
    watch = world.watch
    if watch is None:
        yield
        return
    watch.calls += 1
    try:
        yield
    except (RuntimeError, dist.DistError) as exc:
        silent = watch.silent(world.rank, world.size, watch.calls)
        raise CollectiveFailed(name, exc, _timed_out(exc), silent, world.size, watch.timeout_s) from exc


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes; ``watch``: the process group's store
    and timeout (several processes only)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    watch: Watch | None = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _first_host(nodelist: str) -> str:
    """The first hostname of a SLURM node list (``node[01-04],gpu7`` → ``node01``)."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        head = prefix + rest.split("-")[0].split(",")[0].rstrip("]")
    return head


def world_from_env(env: dict[str, str] | None = None) -> World:
    """The launch this process is part of (module doc); sets ``MASTER_ADDR``/``MASTER_PORT``
    from SLURM's variables when they are missing."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        if "MASTER_ADDR" not in env:
            env["MASTER_ADDR"] = _first_host(env.get("SLURM_JOB_NODELIST", "localhost"))
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return World(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return World()


def init_distributed(device: torch.device, env: dict[str, str] | None = None, timeout_s: float = 600) -> World:
    """Join the process group of this launch (no-op for one process); returns the world.

    The group's collectives wait ``timeout_s`` (``launch.timeout_s``) for a process before they
    fail. The store comes from the ``env://`` rendezvous — torchrun's agent's own, else one on
    rank 0 — under a prefix of torchrun's attempt: the agent's store outlives a failed attempt,
    and a restarted one that read its keys would connect to the old processes' addresses
    ("Gloo connectFullMesh failed … Connection refused"). It is kept in the world's
    :class:`Watch`. On CUDA each process uses GPU ``local_rank``; the returned device is the
    caller's to set.
    """
    world = world_from_env(env)
    if not world.distributed or dist.is_initialized():
        return world
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    timeout = timedelta(seconds=float(timeout_s))
    store, rank, size = next(dist.rendezvous("env://", world.rank, world.size, timeout=timeout))
    store = dist.PrefixStore(f"lil/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    return World(world.rank, world.size, world.local_rank, Watch(store, timeout_s, control))


def close_distributed(synchronize: bool = True, world: World | None = None) -> None:
    """Leave the process group this process joined (no-op when it joined none).

    A process that exits with a live gloo group can abort (SIGABRT) while the interpreter tears
    down gloo's worker threads, failing a run that had finished. After a run that ended well,
    ``synchronize`` first waits for every process, so none tears the group down while another
    still uses it; after a failure there is no such wait, as a peer may never arrive.
    """
    if not dist.is_initialized():
        return
    if synchronize:
        with _collective("barrier at the end of the run", world or World()):
            dist.barrier()
    dist.destroy_process_group()


def check_meta_batch(meta_batch: int, world: World) -> int:
    """Tasks per process; the meta-batch must split evenly."""
    if meta_batch % world.size:
        raise ConfigError(f"solver.meta_batch: {meta_batch} tasks do not split over {world.size} "
                          f"processes; use a multiple of {world.size}")
    return meta_batch // world.size


def average_gradients(params: list[torch.Tensor], world: World) -> torch.Tensor | None:
    """Replace each ``.grad`` by its mean over the processes: one all-reduce of a flat buffer.

    A parameter with no gradient here keeps ``grad = None``, so the optimizer skips it as it
    would in one process. Which parameters the loss reaches is the same on every process (the
    same algorithm on tasks of the same shape); the all-reduce also counts, per parameter, the
    processes that had a gradient, and the returned 0-dim boolean says whether they all agreed
    (``None`` for one process). It stays on the device: nothing here is read by the host.
    """
    if not world.distributed:
        return None
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    device = grads[0].device
    present = torch.tensor([float(p.grad is not None) for p in params], dtype=grads[0].dtype)
    flat = torch.cat([g.reshape(-1) for g in grads] + [present.to(device, non_blocking=True)])
    with _collective("all-reduce of the meta-gradients", world):
        dist.all_reduce(flat)
    agreed = ((flat[-len(params):] == 0) | (flat[-len(params):] == world.size)).all()
    flat /= world.size
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        if p.grad is not None:
            p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
    return agreed


def average_scalars(scalars: dict[str, torch.Tensor], world: World) -> dict[str, torch.Tensor]:
    """Mean of each logged 0-dim tensor over the processes (the keys are the same on every
    rank): one all-reduce, and no value is read back to the host."""
    if not world.distributed:
        return scalars
    keys = sorted(scalars)
    device = torch.as_tensor(scalars["loss"]).device if "loss" in scalars else None
    values = torch.stack([torch.as_tensor(scalars[k]).to(device, torch.float64) for k in keys])
    with _collective("all-reduce of the logged scalars", world):
        dist.all_reduce(values)
    return dict(zip(keys, (values / world.size).unbind(), strict=True))


def gather_lists(items: list, world: World) -> list:
    """Every process's ``items`` concatenated in rank order (on every process)."""
    if not world.distributed:
        return list(items)
    parts: list = [None] * world.size
    with _collective("gather of the evaluation results", world):
        dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def any_process(flag: bool, world: World) -> bool:
    """True on every process when ``flag`` is true on any (e.g. a stop request): a host-side
    all-reduce (gloo), which waits on no GPU."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    group = world.watch.control_group if world.watch is not None else None
    with _collective("all-reduce of a stop request", world):
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


class RankSlice:
    """A sampler's batches, cut to this process's share of the tasks (module doc).

    Wraps any sampler with ``next_batch()`` and ``state_dict``/``load_state_dict``; all
    processes step the same sampler state, so a checkpoint from rank 0 resumes them all.
    """

    def __init__(self, sampler, world: World) -> None:
        self.sampler, self.world = sampler, world

    def next_batch(self):
        batch = self.sampler.next_batch()
        if not self.world.distributed:
            return batch
        per = check_meta_batch(batch.num_tasks, self.world)
        lo = self.world.rank * per
        return batch.tasks(lo, lo + per)

    def state_dict(self):
        return self.sampler.state_dict()

    def load_state_dict(self, state) -> None:
        self.sampler.load_state_dict(state)
