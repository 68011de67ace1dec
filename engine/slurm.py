"""SLURM launch through submitit, with checkpoint-and-requeue on preemption and time limits.

``tools/train_net.py --config-file X.yaml --slurm [--nodes N --gpus-per-node G …] key=value``
submits the run as one job (:func:`submit_command_line`) and returns after printing the job id
and log paths; the job folders live in ``OUTPUT_DIR/slurm/``. ``--slurm-local`` runs the same
job with submitit's local executor (no cluster needed). ``tools/sweep.py --launcher slurm``
submits its runs as one job array the same way: :func:`submit` takes a list of command lines
(train_net's arguments) and makes each a :class:`TrainJob`, which runs
:func:`engine.runner.run` in the job's process.

Each SLURM task is one training process (``tasks_per_node`` = GPUs per node, or 1 on CPUs);
:mod:`engine.launch` turns the tasks into a torch.distributed group. The job always runs with
``--resume``, so a requeued job continues from its output folder's last checkpoint.

The job's run takes its output folder's lock like any run (:mod:`engine.run_lock`): a job that
starts while another process still writes that folder (a requeue overlapping a live job, a
second submission) is refused with one line naming the holder, and changes nothing. SIGTERM is
left to submitit's handler (:mod:`engine.interrupt` replaces only Python's defaults).

Preemption and time limits: SLURM sends ``SIGUSR2`` (submitit asks for it ahead of the time
limit). The handler only raises a flag; :class:`PreemptionHook` sees it after the running
iteration ends (every process agrees through :func:`engine.launch.any_process`), saves a full
checkpoint of that consistent state, and hands over to submitit's own handler, which calls
:meth:`TrainJob.checkpoint` and requeues the job. ``--max-requeues`` bounds the number of
requeues (after that the job ends, its checkpoint kept for a manual ``--resume``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from lil_meta.engine.checkpoint import Checkpointer
from lil_meta.engine.defaults import (
    SLURM_FLAGS_TAKE_VALUES,
    default_argument_parser,
    load_run_config,
)
from lil_meta.engine.errors import ConfigError, ProcessGroupError
from lil_meta.engine.launch import any_process, world_from_env
from lil_meta.engine.runner import run
from lil_meta.engine.trainer import HookBase

logger = logging.getLogger(__name__)

__all__ = ["job_argv", "TrainJob", "PreemptionHook", "submit", "submit_command_line"]

def job_argv(argv: list[str]) -> list[str]:
    """The command line minus the SLURM flags: what the job itself runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in SLURM_FLAGS_TAKE_VALUES:
            skip = SLURM_FLAGS_TAKE_VALUES[flag] and "=" not in arg
            continue
        out.append(arg)
    return out


class PreemptionHook(HookBase):
    """After each iteration: if a stop was requested on any process, checkpoint and call
    ``on_stop`` (which requeues and exits)."""

    def __init__(self, checkpointer, on_stop) -> None:
        self.checkpointer, self.on_stop = checkpointer, on_stop
        self.requested = False

    def request(self, signum: int, frame: Any = None) -> None:
        self.requested = True
        self.signum = signum

    def after_step(self) -> None:
        trainer = self.trainer
        if not any_process(self.requested, trainer.world):
            return
        done = trainer.iter + 1
        self.checkpointer.save(f"model_{trainer.iter:07d}", **trainer.state_dict())
        logger.warning("preempted or out of time: saved iteration %d, requeueing", done)
        self.on_stop(getattr(self, "signum", signal.SIGUSR2))


class TrainJob:
    """The callable submitit runs: :func:`engine.runner.run` on ``argv`` plus ``--resume``."""

    def __init__(self, argv: list[str], max_requeues: int = 10) -> None:
        self.argv = list(argv)
        self.max_requeues = int(max_requeues)
        self.requeues = 0

    def __call__(self) -> dict:
        args = default_argument_parser().parse_args([*self.argv, "--resume"])
        cfg = load_run_config(args)
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        hook = PreemptionHook(Checkpointer(cfg.output_dir, cfg.solver.keep_checkpoints, cfg, writer=_is_rank0()),
                              on_stop=lambda signum: submitit_handler(signum, None))
        signal.signal(signal.SIGUSR2, hook.request)
        try:
            return run(args, extra_hooks=[hook])
        except ProcessGroupError as exc:  # another task was lost or stalled: one line, this task ends
            print(f"error: {exc}", file=sys.stderr, flush=True)
            os._exit(exc.exit_code)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on preemption/timeout, after :class:`PreemptionHook` saved."""
        import submitit  # noqa: PLC0415

        if self.requeues >= self.max_requeues:
            logger.warning("not requeueing: already requeued %d times (--max-requeues)", self.requeues)
            return None
        self.requeues += 1
        return submitit.helpers.DelayedSubmission(self)


def _is_rank0() -> bool:
    return world_from_env().is_main


def submit(argvs: list[list[str]], folder: str | Path, *, local: bool = False, nodes: int = 1,
           gpus_per_node: int = 0, tasks_per_node: int | None = None, cpus_per_task: int = 2,
           partition: str | None = None, account: str | None = None, time_min: int = 60,
           mem_gb: int | None = None, max_requeues: int = 10, array_parallelism: int | None = None,
           name: str = "lil") -> list:
    """Submit one :class:`TrainJob` per command line in ``argvs`` (a job array when there are
    several), with submitit's folders under ``folder``; returns the submitit jobs."""
    import submitit  # noqa: PLC0415

    if not local and shutil.which("sbatch") is None:
        raise ConfigError("--slurm: sbatch is not on PATH (no SLURM here); use --slurm-local to "
                          "run the job with submitit's local executor")
    tasks = tasks_per_node or max(1, gpus_per_node)
    executor = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster="local" if local else "slurm")
    params: dict[str, Any] = {"name": name, "nodes": nodes, "tasks_per_node": tasks,
                              "cpus_per_task": cpus_per_task, "timeout_min": time_min}
    if not local:  # a task that dies ends the job step's other tasks at once (docs/cluster.md)
        params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
    if gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    if not local:
        params.update({k: v for k, v in (("slurm_partition", partition), ("slurm_account", account),
                                          ("mem_gb", mem_gb), ("slurm_array_parallelism", array_parallelism))
                       if v})
    executor.update_parameters(**params)
    return executor.submit_array([TrainJob(argv, max_requeues) for argv in argvs])


def submit_command_line(args: argparse.Namespace, argv: list[str]) -> None:
    """``--slurm`` / ``--slurm-local`` of train_net's command line (``args`` parsed from
    ``argv``): submit the run as one job and print where to look."""
    out = Path(load_run_config(args).output_dir).resolve()
    command = job_argv(argv)
    if not args.output_dir:  # pin the folder the job writes to: the one printed here
        command += ["--output-dir", str(out)]
    (job,) = submit([command], out / "slurm", local=args.slurm_local, nodes=args.nodes,
                    gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node,
                    cpus_per_task=args.cpus_per_task, partition=args.partition, account=args.account,
                    time_min=args.time, mem_gb=args.mem, max_requeues=args.max_requeues)
    print(f"submitted job {job.job_id} ({'local' if args.slurm_local else 'slurm'})")
    print(f"  output: {out}")
    print(f"  stdout: {job.paths.stdout}")
    print(f"  stderr: {job.paths.stderr}", flush=True)
    if args.slurm_local:  # the local executor's job dies with this process: wait for it
        job.result()
