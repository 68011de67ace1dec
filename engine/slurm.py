"""SLURM launch through submitit, with checkpoint-and-requeue on preemption and time limits.

``tools/train_net.py --config-file X.yaml --slurm [--nodes N --gpus-per-node G …] key=value``
submits :class:`TrainJob` with ``submitit.AutoExecutor`` and returns after printing the job id
and log paths; the job folders live in ``OUTPUT_DIR/slurm/``. ``--slurm-local`` runs the same
job with submitit's local executor (no cluster needed).

Each SLURM task is one training process (``tasks_per_node`` = GPUs per node, or 1 on CPUs);
:mod:`engine.launch` turns the tasks into a torch.distributed group. The job always runs with
``--resume``, so a requeued job continues from its output folder's last checkpoint.

Preemption and time limits: SLURM sends ``SIGUSR2`` (submitit asks for it ahead of the time
limit). The handler only raises a flag; :class:`PreemptionHook` sees it after the running
iteration ends (every process agrees through :func:`engine.launch.any_process`), saves a full
checkpoint of that consistent state, and hands over to submitit's own handler, which calls
:meth:`TrainJob.checkpoint` and requeues the job. ``--max-requeues`` bounds the number of
requeues (after that the job ends, its checkpoint kept for a manual ``--resume``).
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.trainer import HookBase

logger = logging.getLogger(__name__)

__all__ = ["TrainJob", "PreemptionHook", "submit"]

TOOLS = str(Path(__file__).resolve().parents[1] / "tools")


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
        from engine.launch import any_process  # noqa: PLC0415  (keeps this module light)

        trainer = self.trainer
        if not any_process(self.requested, trainer.world):
            return
        done = trainer.iter + 1
        self.checkpointer.save(f"model_{trainer.iter:07d}", **trainer.state_dict())
        logger.warning("preempted or out of time: saved iteration %d, requeueing", done)
        self.on_stop(getattr(self, "signum", signal.SIGUSR2))


class TrainJob:
    """The callable submitit runs: ``train_net.run`` on ``argv`` plus ``--resume``."""

    def __init__(self, argv: list[str], max_requeues: int = 10) -> None:
        self.argv = list(argv)
        self.max_requeues = int(max_requeues)
        self.requeues = 0

    def __call__(self) -> dict:
        if TOOLS not in sys.path:
            sys.path.insert(0, TOOLS)
        import train_net  # noqa: PLC0415  (tools/train_net.py, imported in the job's process)

        from engine.checkpoint import Checkpointer  # noqa: PLC0415
        from engine.config import load_config  # noqa: PLC0415

        args = train_net.parse_args([*self.argv, "--resume"])
        cfg = load_config(args.config_file, args.opts)
        if args.output_dir:
            cfg.output_dir = args.output_dir
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        hook = PreemptionHook(Checkpointer(cfg.output_dir, cfg.solver.keep_checkpoints, cfg, writer=_is_rank0()),
                              on_stop=lambda signum: submitit_handler(signum, None))
        signal.signal(signal.SIGUSR2, hook.request)
        return train_net.run(args, extra_hooks=[hook])

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on preemption/timeout, after :class:`PreemptionHook` saved."""
        import submitit  # noqa: PLC0415

        if self.requeues >= self.max_requeues:
            logger.warning("not requeueing: already requeued %d times (--max-requeues)", self.requeues)
            return None
        self.requeues += 1
        return submitit.helpers.DelayedSubmission(self)


def _is_rank0() -> bool:
    from engine.launch import world_from_env  # noqa: PLC0415

    return world_from_env().is_main


def submit(argv: list[str], output_dir: str | Path, *, local: bool = False, nodes: int = 1,
           gpus_per_node: int = 0, tasks_per_node: int | None = None, cpus_per_task: int = 2,
           partition: str | None = None, account: str | None = None, time_min: int = 60,
           mem_gb: int | None = None, max_requeues: int = 10, name: str = "lil"):
    """Submit ``train_net.py argv`` as one job; returns the submitit job."""
    import shutil  # noqa: PLC0415

    import submitit  # noqa: PLC0415

    if not local and shutil.which("sbatch") is None:
        raise ConfigError("--slurm: sbatch is not on PATH (no SLURM here); use --slurm-local to "
                          "run the job with submitit's local executor")
    tasks = tasks_per_node or max(1, gpus_per_node)
    folder = Path(output_dir) / "slurm" / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if local else "slurm")
    params: dict[str, Any] = {"name": name, "nodes": nodes, "tasks_per_node": tasks,
                              "cpus_per_task": cpus_per_task, "timeout_min": time_min}
    if gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    if not local:
        params.update({k: v for k, v in (("slurm_partition", partition), ("slurm_account", account),
                                          ("mem_gb", mem_gb)) if v})
    executor.update_parameters(**params)
    return executor.submit(TrainJob(argv, max_requeues))
