"""A run from the command line, assembled: prepare, then train and test (or only test).

:func:`run` is what ``tools/train_net.py`` and the SLURM jobs (:mod:`engine.slurm`) call.
:func:`prepare_run` loads the config, sets the device, precision and processes up, builds the
components (:func:`engine.build.build_components`, a pure function of the config) — any of which
may fail on bad input, before anything is written — then opens the run folder
(:class:`engine.run_folder.RunFolder`: its lock, the checkpoint to resume or test, ``config.yaml``,
logging, seeds). :func:`train_and_test` runs :class:`engine.trainer.MetaTrainer` with the standard
hooks (:func:`build_trainer`), saves ``model_final.pth``, tests the final and the
best-on-validation weights on the same fixed test tasks and writes ``results.json``;
:func:`evaluate_only` (``--eval-only``) tests one checkpoint into ``eval_results.json``. Both print
one summary line last. Bad input raises :class:`engine.errors.UserInputError`; a numerical fault,
:class:`engine.trainer.NumericalFault` after the state before it is saved; a lost or stalled
process, :class:`engine.errors.ProcessGroupError`; a signal, :class:`engine.interrupt.RunInterrupted`.
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
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from lil_meta.engine.build import Components, build_components
from lil_meta.engine.checkpoint import atomic_write
from lil_meta.engine.cpu_memory import keep_freed_memory
from lil_meta.engine.defaults import check_solver, load_run_config, record_error, resolve_device
from lil_meta.engine.errors import CheckpointError, OutputError, ProcessGroupError
from lil_meta.engine.evaluation import evaluate
from lil_meta.engine.fileio import NO_SPACE, disk_full_error
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
    World,
    check_meta_batch,
    close_distributed,
    init_distributed,
)
from lil_meta.engine.precision import Precision, apply_precision, precision_switches
from lil_meta.engine.resume import check_weights_finite, resume_notes
from lil_meta.engine.run_folder import RunFolder
from lil_meta.engine.trainer import MetaTrainer, NumericalFault

logger = logging.getLogger(__name__)

__all__ = ["Run", "run", "prepare_run", "build_trainer", "train_and_test", "evaluate_only"]

ADVICE = "Try a lower solver.lr or algorithm.inner_lr, solver.clip_grad_norm, or solver.on_nonfinite=skip"


@dataclass(frozen=True, kw_only=True)
class Run:
    """A run ready to train or test (:func:`prepare_run`)."""

    args: argparse.Namespace
    cfg: DictConfig
    world: World
    device: torch.device
    precision: Precision
    components: Components
    folder: RunFolder
    start_time: float  # when the run began (perf_counter), for results.json's wall time

    @property
    def output_dir(self) -> Path:
        return self.folder.path


class _Progress:
    """The trainer once it exists: the iteration an interruption or a lost process names."""

    trainer: MetaTrainer | None = None


def run(args: argparse.Namespace, extra_hooks=()) -> dict:
    """The run ``args`` asks for (module doc); ``extra_hooks`` are appended to the trainer's
    (the SLURM job adds its preemption hook, :mod:`engine.slurm`).

    The run folder's lock (:mod:`engine.run_lock`) is held from before the folder is checked
    until this returns. SIGINT/SIGTERM end it as :class:`engine.interrupt.RunInterrupted`; a
    full disk as :class:`engine.errors.OutputError`; a lost or stalled process as
    :class:`engine.errors.ProcessGroupError`; the error that ends a run that got as far as its
    ``log.txt`` is recorded there too."""
    built: Run | None = None
    progress = _Progress()
    with signals_as_interrupt(), _disk_errors_reported_once():
        try:
            built = prepare_run(args)
            result = evaluate_only(built) if args.eval_only else train_and_test(built, extra_hooks, progress)
            close_distributed(world=built.world)
        except BaseException as exc:
            if not isinstance(exc, CollectiveFailed):  # a broken group is left as it is: the process ends
                close_distributed(synchronize=False)
            error = _run_error(exc, built, progress)
            if built is not None:
                record_error(error or exc)
            if error is not None:
                raise error from None
            raise
        finally:
            if built is not None:
                built.folder.release()
    return result


def _run_error(exc: BaseException, built: Run | None, progress: _Progress) -> BaseException | None:
    """The one-line error ``exc`` stands for (an interruption, a lost process, a full disk), or
    ``None``."""
    trainer = progress.trainer
    if isinstance(exc, KeyboardInterrupt):
        signum = getattr(exc, "signum", signal.SIGINT)
        if built is None:
            return RunInterrupted(0, signum)
        done = trainer.iter if trainer is not None else int((built.folder.resume_state or {}).get("iteration", 0))
        return RunInterrupted(done, signum)
    if isinstance(exc, CollectiveFailed):
        where = f"iteration {trainer.iter}: " if trainer is not None else ""
        last = built.folder.checkpointer.get_checkpoint_file() if built is not None else None
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


def prepare_run(args: argparse.Namespace) -> Run:
    """Everything before training: the config, the device, precision and processes; the
    components, built before anything is written (bad input fails here); then the run folder,
    opened (its lock, the checkpoint to read, ``config.yaml``, logging, seeds)."""
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
    folder = RunFolder(cfg, args, world)
    folder.check()  # fail fast, reads only
    components = build_components(cfg, device, world, train=not args.eval_only)
    if restart and world.is_main:
        folder.notes.append((logging.WARNING, restart))
    folder.open(components.algorithm)
    logger.info(malloc_note)
    logger.info("precision: %s (solver.precision); %s", precision.name,
                ", ".join(f"{k}={v}" for k, v in precision_switches().items()))
    for level, note in folder.notes:
        logger.log(level, "%s", note)
    core = getattr(components.algorithm, "main", components.algorithm)
    if not args.eval_only and hasattr(core, "policy"):  # an algorithm with an inner loop
        policy = core.policy(device)
        logger.info("inner loop: %s engine (algorithm.execution.engine=%s; auto = vmap over tasks on CUDA, the "
                    "per-task loop on CPU, where each measured faster)", policy.engine, core.execution.engine)
        logger.info("channels-last images: %s (algorithm.execution.channels_last=%s; auto on CPU = the query set, "
                    "and the support set too unless a double backward runs through a convolution other than a "
                    "per-task TaskConv2d)", policy.channels_last, core.execution.channels_last)
    return Run(args=args, cfg=cfg, world=world, device=device, precision=precision, components=components,
               folder=folder, start_time=start_time)


def build_trainer(built: Run, extra_hooks=()) -> MetaTrainer:
    """The trainer with the standard hooks, in the order :mod:`engine.hooks` needs, then
    ``extra_hooks``."""
    cfg, solver, parts, checkpointer = built.cfg, built.cfg.solver, built.components, built.folder.checkpointer
    trainer = MetaTrainer(parts.algorithm, parts.sampler, parts.optimizer, device=built.device, world=built.world,
                          on_nonfinite=solver.on_nonfinite, max_skips=solver.max_skips,
                          clip_grad_norm=solver.clip_grad_norm, task_chunk=solver.task_chunk,
                          precision=built.precision)
    trainer.register_hooks([
        IterationTimer(),
        LRScheduler(parts.optimizer, parts.scheduler),
        PhaseBoundary(parts.optimizer, cfg.pretrain.iters) if cfg.pretrain.iters > 0 else None,
        EvalHook(cfg.test.eval_period, parts.val_tasks, checkpointer, cfg.test.batch, built.device),
        PeriodicCheckpointer(checkpointer, solver.checkpoint_period),
        PeriodicWriter(built.output_dir, cfg.log.period, tensorboard=cfg.log.tensorboard)
        if built.world.is_main else None,
        *extra_hooks,
    ])
    return trainer


def _hook(trainer: MetaTrainer, kind: type):
    return next(h for h in trainer.hooks if isinstance(h, kind))


def train_and_test(built: Run, extra_hooks=(), progress: _Progress | None = None) -> dict:
    """Train from the start or the resumed iteration to ``solver.max_iter``, save
    ``model_final.pth``, test the final and the best-on-validation weights; ``results.json``."""
    cfg, checkpointer, out = built.cfg, built.folder.checkpointer, built.output_dir
    resume_state = built.folder.resume_state
    trainer = build_trainer(built, extra_hooks)
    if progress is not None:
        progress.trainer = trainer
    timer, eval_hook = _hook(trainer, IterationTimer), _hook(trainer, EvalHook)
    start_iter = 0
    if resume_state is not None:
        try:
            start_iter = trainer.load_state_dict(resume_state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{checkpointer.get_checkpoint_file()}: cannot restore the "
                                  f"training state ({str(exc).splitlines()[0]})") from None
        logger.info("resuming from iteration %d", start_iter)
        for note in resume_notes(resume_state, cfg, start_iter):
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
    algorithm = built.components.algorithm
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
    """``--eval-only``: test the checkpoint the run folder read; ``eval_results.json``."""
    folder = built.folder
    check_weights_finite(folder.eval_state["model"], folder.eval_weights)
    built.components.algorithm.load_state_dict(folder.eval_state["model"])
    result = _test(built, "test")
    if built.world.is_main:
        _write_json(built.output_dir / "eval_results.json", {
            "weights": str(folder.eval_weights), "test_acc": result["acc"], "test_ci95": result["ci95"],
            "test_tasks": result["n"], "precision": built.precision.name})
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
    return evaluate(built.components.algorithm, built.components.test_tasks, built.cfg.test.batch, built.device,
                    desc=desc, world=built.world, precision=built.precision)


def _summary(result: dict, cfg: DictConfig, label: str = "test accuracy") -> str:
    return (f"{label}: {result['acc']:.2f} ± {result['ci95']:.2f} % "
            f"({result['n']} tasks, {cfg.data.way}-way {cfg.data.shot}-shot)")


def _write_json(path: Path, data: dict) -> None:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}
    atomic_write(path, lambda f: f.write((json.dumps(clean, indent=2) + "\n").encode()))
