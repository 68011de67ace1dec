"""A run from the command line, assembled: build, then set up, then train and test (or only test).

:func:`run` is what ``tools/train_net.py`` and the SLURM jobs (:mod:`engine.slurm`) call, in
order: :func:`build_run` loads the config and builds the dataset, samplers, task lists,
algorithm and optimizer — any of which may fail on bad input, before anything is written — then
takes the run folder's lock (:mod:`engine.run_lock`), checks the folder and reads the checkpoint
to resume or test under it, and only then calls :func:`engine.defaults.default_setup` (output
folder, ``config.yaml``, logging, seeds). :func:`train_and_test` runs :class:`engine.trainer.MetaTrainer`
with the standard hooks (:func:`build_trainer`), saves ``model_final.pth``, tests the final and
the best-on-validation weights on the same fixed test tasks and writes ``results.json``;
:func:`evaluate_only` (``--eval-only``) tests one checkpoint into ``eval_results.json``. Both print
one summary line last. Bad input raises :class:`engine.errors.UserInputError`; a numerical
fault, :class:`engine.trainer.NumericalFault` after the state before it is saved.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from lil_meta.datasets import EpisodicSampler, TaskList, build_dataset
from lil_meta.engine.checkpoint import Checkpointer, atomic_write
from lil_meta.engine.cpu_memory import keep_freed_memory
from lil_meta.engine.defaults import (
    build_lr_scheduler,
    build_optimizer,
    check_output_dir,
    check_solver,
    default_setup,
    load_run_config,
    record_error,
    resolve_device,
    seed_all,
)
from lil_meta.engine.errors import CheckpointError, ConfigError, OutputError, ProcessGroupError
from lil_meta.engine.evaluation import evaluate
from lil_meta.engine.fileio import NO_SPACE, disk_full_error, remove_stale_temps
from lil_meta.engine.hooks import (
    EvalHook,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
    PhaseBoundary,
)
from lil_meta.engine.interrupt import RunInterrupted, signals_as_interrupt
from lil_meta.engine.launch import (
    CollectiveFailed,
    RankSlice,
    World,
    check_meta_batch,
    close_distributed,
    init_distributed,
)
from lil_meta.engine.precision import Precision, apply_precision, precision_switches
from lil_meta.engine.resume import (
    check_folder_config,
    check_weights_finite,
    held_back_warnings,
    init_from_weights,
    resume_notes,
)
from lil_meta.engine.run_lock import RunLock, acquire
from lil_meta.engine.trainer import MetaTrainer, NumericalFault
from lil_meta.models import build_algorithm

logger = logging.getLogger(__name__)

__all__ = ["Run", "run", "build_run", "build_trainer", "train_and_test", "evaluate_only"]

ADVICE = "Try a lower solver.lr or algorithm.inner_lr, solver.clip_grad_norm, or solver.on_nonfinite=skip"


@dataclass
class Run:
    """What :func:`build_run` built; the training parts are ``None`` for ``--eval-only``."""

    args: argparse.Namespace
    cfg: DictConfig
    world: World
    device: torch.device
    algorithm: torch.nn.Module
    test_tasks: TaskList
    checkpointer: Checkpointer
    start_time: float  # when the run began (perf_counter), for results.json's wall time
    precision: Precision
    sampler: RankSlice | None = None
    val_tasks: TaskList | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    resume_state: dict | None = None  # --resume: the checkpoint read
    eval_weights: Path | None = None  # --eval-only: the checkpoint tested, and its state
    eval_state: dict | None = None
    lock: RunLock | None = None  # the run folder's, on the main process
    trainer: MetaTrainer | None = None
    notes: list[tuple[int, str]] = field(default_factory=list)  # (level, line), logged once log.txt is set up

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir)


def run(args: argparse.Namespace, extra_hooks=()) -> dict:
    """The run ``args`` asks for (module doc); ``extra_hooks`` are appended to the trainer's
    (the SLURM job adds its preemption hook, :mod:`engine.slurm`).

    The run folder's lock (:mod:`engine.run_lock`) is held from before the folder is checked
    until this returns. SIGINT/SIGTERM end it as :class:`engine.interrupt.RunInterrupted`; a
    full disk as :class:`engine.errors.OutputError`; the error that ends a run that got as far
    as its ``log.txt`` is recorded there too."""
    built: Run | None = None
    with signals_as_interrupt(), _disk_errors_reported_once():
        try:
            built = build_run(args)
            result = evaluate_only(built) if args.eval_only else train_and_test(built, extra_hooks)
        except BaseException as exc:
            if not isinstance(exc, CollectiveFailed):  # a broken group is left as it is: the process ends
                close_distributed(synchronize=False)
            error = _run_error(exc, built)
            if built is not None:
                record_error(error or exc)
            if built is not None and built.lock is not None:
                built.lock.release()
            if error is not None:
                raise error from None
            raise
        try:
            close_distributed(world=built.world)
        except CollectiveFailed as exc:
            raise _run_error(exc, built) from None
        finally:
            if built.lock is not None:
                built.lock.release()
    return result


def _run_error(exc: BaseException, built: Run | None) -> BaseException | None:
    """The one-line error ``exc`` stands for (an interruption, a full disk), or ``None``."""
    if isinstance(exc, KeyboardInterrupt):
        signum = getattr(exc, "signum", signal.SIGINT)
        if built is None:
            return RunInterrupted(0, signum)
        trainer = built.trainer
        done = trainer.iter if trainer is not None else int((built.resume_state or {}).get("iteration", 0))
        return RunInterrupted(done, signum)
    if isinstance(exc, CollectiveFailed):
        trainer = built.trainer if built is not None else None
        where = f"iteration {trainer.iter}: " if trainer is not None else ""
        last = built.checkpointer.get_checkpoint_file() if built is not None else None
        return ProcessGroupError(f"{where}{exc.describe()}; the last checkpoint is "
                                 f"{last.name if last else 'none yet'}; continue with --resume once every "
                                 "process can run")
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        if exc.filename:
            return disk_full_error(exc.filename, exc)
        where = built.output_dir if built else "output_dir"
        return OutputError(f"{where}: cannot write to the run folder (metrics, log or TensorBoard events): "
                           f"{exc.strerror or 'no space left on device'}; its checkpoints are complete; free some "
                           "space and continue with --resume")
    return None


@contextmanager
def _disk_errors_reported_once():
    """A write thread's full disk (TensorBoard's event writer) is reported by the main thread,
    which sees the same error next, as one line; the thread's own traceback is not printed."""
    previous = threading.excepthook

    def hook(args):
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in NO_SPACE):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _task_list(cfg: DictConfig, dataset, split: str, num_tasks: int) -> TaskList:
    d = cfg.data
    return TaskList(dataset.split(split), d.way, d.shot, d.query, num_tasks, seed=cfg.test.seed)


def _eval_weights(cfg: DictConfig, args: argparse.Namespace, checkpointer: Checkpointer) -> Path:
    """The checkpoint ``--eval-only`` tests: ``--weights``, else model_final, else the last one."""
    if args.weights:
        return Path(args.weights)
    final = Path(cfg.output_dir) / "model_final.pth"
    if final.is_file():
        return final
    last = checkpointer.get_checkpoint_file()
    if last is None:
        raise CheckpointError(f"{final}: checkpoint not found (and no last_checkpoint in "
                              f"{cfg.output_dir}); train first or pass --weights")
    return last


RESUMABLE = ("iteration", "model", "optimizer", "sampler", "rng")


def _resume_a_restart(args: argparse.Namespace) -> str | None:
    """A restarted attempt of torchrun (``--max-restarts``: ``TORCHELASTIC_RESTART_COUNT`` > 0)
    continues its folder's run from the newest intact checkpoint, as ``--resume`` does, and never
    starts over it from iteration 0; the line that says so. (SLURM jobs always resume.)"""
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if attempt <= 0 or args.resume or args.eval_only:
        return None
    args.resume = True
    return (f"restarted attempt {attempt} (torchrun --max-restarts): continuing the run in this folder from "
            "its newest intact checkpoint, as --resume does")


def build_run(args: argparse.Namespace) -> Run:
    """Everything that can fail on bad input, built before anything is written; then, under the
    run folder's lock, the folder's checks and the checkpoint to read; then the output folder,
    ``config.yaml``, logging and seeds (:func:`engine.defaults.default_setup`)."""
    start_time = time.perf_counter()
    cfg = load_run_config(args)
    check_solver(cfg)
    restart = _resume_a_restart(args)
    device = resolve_device(cfg.device)
    precision = apply_precision(cfg.solver.precision, device)  # PyTorch's switches, for this run
    malloc_note = keep_freed_memory()  # before the first large tensor (engine/cpu_memory.py)
    world = init_distributed(device, timeout_s=cfg.launch.timeout_s)  # torchrun, a SLURM job step, or one
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    check_meta_batch(cfg.solver.meta_batch, world)
    if world.is_main:
        check_output_dir(cfg, resume=args.resume, eval_only=args.eval_only)  # fail fast, reads only
    if args.weights and not Path(args.weights).is_file():
        raise CheckpointError(f"--weights {args.weights}: checkpoint not found")
    if args.weights and args.resume and not args.eval_only:
        raise ConfigError("--weights starts a new run from those weights; --resume continues the "
                          "folder's own run: pass one of them")
    seed_all(int(cfg.seed))  # initial weights

    dataset = build_dataset(cfg.data)
    test_tasks = _task_list(cfg, dataset, "test", cfg.test.tasks)
    algorithm = build_algorithm(cfg).to(device)
    checkpointer = Checkpointer(cfg.output_dir, cfg.solver.keep_checkpoints, cfg, writer=world.is_main)
    built = Run(args, cfg, world, device, algorithm, test_tasks, checkpointer, start_time, precision)
    if restart and world.is_main:
        built.notes.append((logging.WARNING, restart))
    if not args.eval_only:
        d = cfg.data
        # every process draws the whole meta-batch and keeps its share (engine/launch.py)
        built.sampler = RankSlice(EpisodicSampler(dataset.split("train"), d.way, d.shot, d.query,
                                                  cfg.solver.meta_batch, seed=cfg.seed), world)
        built.val_tasks = _task_list(cfg, dataset, "val", cfg.test.val_tasks)
        built.optimizer = build_optimizer(cfg, algorithm)
        built.scheduler = build_lr_scheduler(cfg, built.optimizer)

    built.lock = acquire(cfg.output_dir) if world.is_main else None
    try:
        _read_folder(built)
        if built.lock is not None:
            built.lock.mark_owner()
            stale = remove_stale_temps(built.output_dir, owned=True)
            built.notes += [(logging.WARNING, f"removed {p.name}, left by a process that died while writing it")
                            for p in stale]
        default_setup(cfg, args, world)
    except BaseException:
        if built.lock is not None:
            built.lock.release(undo=True)
        raise
    logger.info(malloc_note)
    logger.info("precision: %s (solver.precision); %s", precision.name,
                ", ".join(f"{k}={v}" for k, v in precision_switches().items()))
    for level, note in built.notes:
        logger.log(level, "%s", note)
    if args.eval_only:
        return built
    core = getattr(algorithm, "main", algorithm)
    logger.info("inner loop: %s engine (algorithm.engine=%s; auto = vmap over tasks on CUDA, the "
                "per-task loop on CPU, where each measured faster)", core.resolved_engine(device), core.engine)
    logger.info("channels-last images: %s (algorithm.channels_last=%s; auto on CPU = the query set, and the "
                "support set too unless a double backward runs through a convolution other than a per-task TaskConv2d)",
                core.resolved_channels_last(device), core.channels_last)
    return built


def _read_folder(built: Run) -> None:
    """What the run reads from its folder, once its lock is held: the folder checks again (a run
    that finished meanwhile), then the checkpoint to test, to resume or to start from."""
    cfg, args, checkpointer = built.cfg, built.args, built.checkpointer
    if built.world.is_main:
        check_output_dir(cfg, resume=args.resume, eval_only=args.eval_only)
    if args.eval_only:
        built.eval_weights = _eval_weights(cfg, args, checkpointer)
        built.eval_state = checkpointer.load(built.eval_weights)
        return
    if args.resume:
        if built.world.is_main and not checkpointer.has_checkpoint():
            check_folder_config(built.output_dir, checkpointer)
        with held_back_warnings(built.notes):
            built.resume_state = checkpointer.resume_or_load(resume=True, required=RESUMABLE)
        if built.resume_state is None and (built.output_dir / "config.yaml").is_file():
            built.notes.append((logging.WARNING, f"--resume: {built.output_dir} holds no checkpoint yet (its run "
                                                 "stopped before the first one); starting from iteration 0"))
    if args.weights:
        built.notes.append((logging.INFO, init_from_weights(built.algorithm, checkpointer, Path(args.weights))))



def build_trainer(built: Run, extra_hooks=()) -> MetaTrainer:
    """The trainer with the standard hooks, in the order :mod:`engine.hooks` needs, then
    ``extra_hooks``."""
    cfg, solver = built.cfg, built.cfg.solver
    trainer = MetaTrainer(built.algorithm, built.sampler, built.optimizer, built.device, built.world,
                          solver.on_nonfinite, solver.max_skips, solver.clip_grad_norm, solver.task_chunk,
                          built.precision)
    trainer.register_hooks([
        IterationTimer(),
        LRScheduler(built.optimizer, built.scheduler),
        PhaseBoundary(built.optimizer, cfg.pretrain.iters) if cfg.pretrain.iters > 0 else None,
        EvalHook(cfg.test.eval_period, built.val_tasks, built.checkpointer, cfg.test.batch, built.device),
        PeriodicCheckpointer(built.checkpointer, solver.checkpoint_period),
        PeriodicWriter(built.output_dir, cfg.log.period, tensorboard=cfg.log.tensorboard)
        if built.world.is_main else None,
        *extra_hooks,
    ])
    return trainer


def _hook(trainer: MetaTrainer, kind: type):
    return next(h for h in trainer.hooks if isinstance(h, kind))


def train_and_test(built: Run, extra_hooks=()) -> dict:
    """Train from the start or the resumed iteration to ``solver.max_iter``, save
    ``model_final.pth``, test the final and the best-on-validation weights; ``results.json``."""
    cfg, checkpointer, out = built.cfg, built.checkpointer, built.output_dir
    trainer = built.trainer = build_trainer(built, extra_hooks)
    timer, eval_hook = _hook(trainer, IterationTimer), _hook(trainer, EvalHook)
    start_iter = 0
    if built.resume_state is not None:
        try:
            start_iter = trainer.load_state_dict(built.resume_state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{checkpointer.get_checkpoint_file()}: cannot restore the "
                                  f"training state ({str(exc).splitlines()[0]})") from None
        logger.info("resuming from iteration %d", start_iter)
        for note in resume_notes(built.resume_state, cfg, start_iter):
            logger.warning(note)
    max_iter = int(cfg.solver.max_iter)
    if start_iter > max_iter:
        logger.warning("checkpoint is at iteration %d, past solver.max_iter=%d; not training",
                       start_iter, max_iter)
    try:
        trainer.train(start_iter, max(start_iter, max_iter))
    except NumericalFault as fault:
        saved = checkpointer.save("model_last_good", tag_last=True, **fault.state)
        raise NumericalFault(f"{fault}. {ADVICE}. The state before it is in {saved}", fault.state) from None

    # ---- final weights, then test final and best-on-validation on the same tasks ----------
    iterations = trainer.iter
    algorithm = built.algorithm
    checkpointer.save("model_final", model=algorithm.state_dict(), iteration=iterations)
    final = _test(built, "test (final)")
    best_path = out / "model_best.pth"
    best = None
    if eval_hook.best_iter == iterations:  # the final weights are the best-on-validation ones
        best = final
    elif eval_hook.best_iter is not None and best_path.is_file():
        algorithm.load_state_dict(checkpointer.load(best_path)["model"])
        best = _test(built, "test (best val)")
    results = {
        "test_acc": final["acc"], "test_ci95": final["ci95"], "test_tasks": final["n"],
        "test_acc_init": final.get("acc_init"), "test_ci95_init": final.get("ci95_init"),
        "test_lin_acc": final.get("lin_acc"), "test_lin_agree": final.get("lin_agree"),
        "test_lin_err": final.get("lin_err"),
        "best_val_acc": eval_hook.best_acc, "best_val_iter": eval_hook.best_iter,
        "best_test_acc": best["acc"] if best else None,
        "best_test_ci95": best["ci95"] if best else None,
        "iterations": iterations,
        # this process (build, train, test) plus the training time of the runs it resumed
        "wall_time_s": timer.resumed_s + time.perf_counter() - built.start_time,
        "host": host_arithmetic(),
        "precision": built.precision.name,
        "precision_switches": precision_switches(),
    }
    if built.world.is_main:
        _write_json(out / "results.json", results)
        if best:
            logger.info(_summary(best, cfg, f"best-on-val (iter {eval_hook.best_iter}) test accuracy"))
        print(_summary(final, cfg), flush=True)
    return results


def evaluate_only(built: Run) -> dict:
    """``--eval-only``: test the checkpoint :func:`build_run` read; ``eval_results.json``."""
    check_weights_finite(built.eval_state["model"], built.eval_weights)
    built.algorithm.load_state_dict(built.eval_state["model"])
    result = _test(built, "test")
    if built.world.is_main:
        _write_json(built.output_dir / "eval_results.json", {
            "weights": str(built.eval_weights), "test_acc": result["acc"], "test_ci95": result["ci95"],
            "test_tasks": result["n"]})
        print(_summary(result, built.cfg), flush=True)
    return result


def host_arithmetic() -> dict:
    """What sets a CPU run's floating-point rounding besides the code and the config: the same run
    on hosts whose oneDNN picks other kernels (AVX2 against AVX-512) diverges after a few steps.
    ``ONEDNN_MAX_CPU_ISA=AVX2`` in the environment makes x86-64 hosts from AVX2 up agree."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}


def _test(built: Run, desc: str) -> dict:
    return evaluate(built.algorithm, built.test_tasks, built.cfg.test.batch, built.device, desc=desc,
                    world=built.world, precision=built.precision)


def _summary(result: dict, cfg: DictConfig, label: str = "test accuracy") -> str:
    return (f"{label}: {result['acc']:.2f} ± {result['ci95']:.2f} % "
            f"({result['n']} tasks, {cfg.data.way}-way {cfg.data.shot}-shot)")


def _write_json(path: Path, data: dict) -> None:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}
    atomic_write(path, lambda f: f.write((json.dumps(clean, indent=2) + "\n").encode()))
