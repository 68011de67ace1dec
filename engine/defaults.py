"""Run setup shared by the entry points: command line, config, seeding, device, output folder,
logging, optimizer.

:func:`default_argument_parser` is the command line of ``tools/train_net.py`` (and of the SLURM
jobs that run it, :mod:`engine.slurm`); :func:`load_run_config` turns it into the run's config.
The rule is *nothing half-written*: an entry point builds everything that can fail on bad input
(config, dataset, model, algorithm, optimizer, the checkpoint to resume) first, and only then
calls :func:`default_setup`, which checks the output folder before it writes ``config.yaml``
(:func:`engine.runner.build_run` does so). :func:`check_output_dir` is read-only, so entry
points may also call it early to fail fast.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from lil_meta.engine.config import load_config, save_config
from lil_meta.engine.errors import ConfigError, ProcessGroupError, UserInputError
from lil_meta.engine.launch import World
from lil_meta.engine.precision import PRECISIONS

__all__ = ["default_argument_parser", "load_run_config", "check_solver", "seed_all", "resolve_device", "check_output_dir", "default_setup", "setup_logging", "record_error",
           "build_optimizer", "build_lr_scheduler"]


# the SLURM flags of the command line (engine/slurm.py submits the run with them)
_SLURM_ARGUMENTS: list[tuple[str, dict[str, Any]]] = [
    ("--slurm", {"action": "store_true", "help": "submit this run as a SLURM job and return"}),
    ("--slurm-local", {"action": "store_true", "help": "the same job, on submitit's local executor"}),
    ("--nodes", {"type": int, "default": 1}),
    ("--gpus-per-node", {"type": int, "default": 0, "help": "one training process per GPU"}),
    ("--tasks-per-node", {"type": int, "help": "processes per node (default: GPUs, or 1)"}),
    ("--cpus-per-task", {"type": int, "default": 2}),
    ("--partition", {}),
    ("--account", {}),
    ("--time", {"type": int, "default": 60, "metavar": "MIN", "help": "time limit per job"}),
    ("--mem", {"type": int, "metavar": "GB", "help": "memory per node"}),
    ("--max-requeues", {"type": int, "default": 10, "help": "on preemption or time limit"}),
]
SLURM_FLAGS_TAKE_VALUES = {flag: kwargs.get("action") != "store_true" for flag, kwargs in _SLURM_ARGUMENTS}


def _add_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    """The SLURM flags, as one argument group."""
    group = parser.add_argument_group("SLURM (engine/slurm.py, docs/cluster.md)")
    for flag, kwargs in _SLURM_ARGUMENTS:
        group.add_argument(flag, **kwargs)


class _ArgumentParser(argparse.ArgumentParser):
    def parse_args(self, args=None, namespace=None):
        return self.parse_intermixed_args(args, namespace)  # flags may follow the overrides


def default_argument_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The command line of a training run: ``--config-file``, ``--resume``, ``--eval-only``,
    ``--weights``, ``--output-dir``, the SLURM flags (used by :mod:`engine.slurm`) and
    ``key=value`` config overrides, which flags may follow."""
    parser = _ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="experiment YAML")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the output folder's last checkpoint (all state)")
    parser.add_argument("--eval-only", action="store_true",
                        help="only test: model_final.pth, else the last checkpoint, else --weights")
    parser.add_argument("--weights", metavar="PATH",
                        help="checkpoint to evaluate with --eval-only; without it, the weights a new "
                             "run starts training from (its model tensors of matching name and shape)")
    parser.add_argument("--output-dir", metavar="DIR", help="overrides the config's output_dir")
    _add_slurm_arguments(parser)
    parser.add_argument("opts", nargs="*", metavar="key=value",
                        help="config overrides in Hydra's grammar (e.g. solver.lr=3e-4)")
    return parser


def load_run_config(args: argparse.Namespace) -> DictConfig:
    """The run's config: ``--config-file`` with the ``key=value`` overrides, then ``--output-dir``."""
    cfg = load_config(args.config_file, args.opts)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    return cfg


def seed_all(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; a CUDA device that is absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: '{name}' is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' requested but CUDA is not available (use device=cpu)")
    return device


_RUN_MARKERS = ("config.yaml", "last_checkpoint", "metrics.jsonl", "results.json", "model_final.pth")


def _holds_run(out: Path) -> bool:
    """Whether ``out`` holds (part of) a run: its config, checkpoints, metrics or results."""
    if any((out / name).exists() for name in _RUN_MARKERS):
        return True
    return any(p.name.startswith("model_") and p.name.endswith(".pth") for p in out.iterdir())


def check_output_dir(cfg: DictConfig, resume: bool = False, eval_only: bool = False) -> Path:
    """Refuse an output folder that cannot take this run; reads only, writes nothing.

    A folder holding a run (a ``config.yaml``, checkpoints, metrics or results) is only reused
    with ``--resume`` (or for ``--eval-only``); the message says whether that run's config
    differs from this one. A path the system refuses (a name too long, a file on the way) is
    one line naming it.
    """
    out = Path(cfg.output_dir)
    try:
        is_dir, exists = out.is_dir(), out.exists()
        held = is_dir and _holds_run(out)
    except OSError as exc:
        raise UserInputError(f"output_dir: cannot use {out} ({exc.strerror or exc})") from None
    if exists and not is_dir:
        raise UserInputError(f"output_dir: {out} exists and is not a folder")
    saved = out / "config.yaml"
    if held and not (resume or eval_only):
        try:
            previous = OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
            previous.pop("output_dir", None)
        except Exception:
            previous = None
        current = OmegaConf.to_container(cfg, resolve=True)
        current.pop("output_dir", None)
        if saved.is_file() and previous != current:
            raise UserInputError(
                f"output folder {out} already holds a run with a different config; "
                "pass --resume to continue it or choose another --output-dir"
            )
        raise UserInputError(
            f"output folder {out} already holds a run; pass --resume or choose another --output-dir"
        )
    return out


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UserInputError(f"output_dir: cannot write to {out} ({exc.strerror or exc})") from None


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints through ``tqdm.write`` so log lines do not break the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


class _FileHandler(logging.FileHandler):
    """``log.txt``: a record that cannot be written (a full disk) is dropped, not reported with a
    traceback per line; the run's own error says what failed."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Root logger to the console (short lines) and, if given, ``log_file`` (timestamped)."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in [h for h in root.handlers if getattr(h, "_lil", False)]:
        root.removeHandler(handler)
        handler.close()
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        file = _FileHandler(log_file, mode="a")
        file.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s"))
        handlers.append(file)
    for handler in handlers:
        handler._lil = True
        root.addHandler(handler)


def record_error(exc: BaseException) -> None:
    """Write the error that ends a run to its ``log.txt`` only (the console gets it from the
    entry point, once): the one-line message, or the traceback of an unexpected exception."""
    root = logging.getLogger()
    files = [h for h in root.handlers if getattr(h, "_lil", False) and isinstance(h, logging.FileHandler)]
    if not files or isinstance(exc, SystemExit):  # SystemExit: submitit's requeue, logged by the hook
        return
    expected = isinstance(exc, (UserInputError, FloatingPointError, ProcessGroupError)) \
        or type(exc).__name__ == "RunInterrupted"
    record = root.makeRecord(__name__, logging.ERROR, __file__, 0, f"error: {exc}" if expected else
                             f"run ended by {type(exc).__name__}: {exc}", None,
                             None if expected else (type(exc), exc, exc.__traceback__))
    for handler in files:
        handler.handle(record)


def default_setup(cfg: DictConfig, args, world: World | None = None) -> torch.device:
    """Prepare a run after everything is built; returns the device.

    In order: check the output folder (:func:`check_output_dir`), check that it is writable,
    write ``config.yaml`` (not for ``--eval-only``; this also makes ``cfg`` read-only), log to
    the console and ``output_dir/log.txt``, then seed everything with ``cfg.seed``. Seeding
    here, after the builders ran, makes the training stream start from a known state whatever
    the builders drew; entry points seed once more before building, for the initial weights.

    With several processes (``world``) only rank 0 checks and writes the folder; the others log
    warnings and errors to the console only.
    """
    if world is not None and not world.is_main:
        setup_logging(None, level=logging.WARNING)
        seed_all(int(cfg.seed))
        return resolve_device(cfg.device)
    resume, eval_only = bool(getattr(args, "resume", False)), bool(getattr(args, "eval_only", False))
    out = check_output_dir(cfg, resume=resume, eval_only=eval_only)
    device = resolve_device(cfg.device)
    _check_writable(out)
    if not eval_only:
        save_config(cfg, out)
    setup_logging(out / "log.txt")
    logger = logging.getLogger(__name__)
    logger.info("command line: %s", " ".join(sys.argv))
    logger.info("output folder %s, device %s, seed %d, pid %d", out, device, cfg.seed, os.getpid())
    seed_all(int(cfg.seed))
    return device


def check_solver(cfg: DictConfig) -> None:
    """The ``solver`` values no builder checks, checked before anything is built or written."""
    solver = cfg.solver
    if solver.meta_batch < 1:
        raise ConfigError(f"solver.meta_batch: must be >= 1, got {solver.meta_batch}")
    if solver.on_nonfinite not in ("stop", "skip"):
        raise ConfigError(f"solver.on_nonfinite: expected stop or skip, got '{solver.on_nonfinite}'")
    for key in ("max_skips", "clip_grad_norm", "checkpoint_period", "max_iter"):
        if solver[key] < 0:
            raise ConfigError(f"solver.{key}: must be >= 0, got {solver[key]}")
    if solver.precision not in PRECISIONS:
        raise ConfigError(f"solver.precision: expected one of {', '.join(PRECISIONS)}; got '{solver.precision}'")
    if solver.fused not in ("auto", True, False):
        raise ConfigError(f"solver.fused: expected auto, true or false; got {solver.fused!r}")


def build_optimizer(cfg: DictConfig, algorithm: torch.nn.Module) -> torch.optim.Optimizer:
    """``solver.optimizer``: ``adam`` or ``sgd`` (plain, no momentum) with ``solver.lr`` and
    ``solver.weight_decay``, over the algorithm's trainable parameters; PyTorch's fused kernel
    with ``solver.fused`` (``auto``: where the parameters are on CUDA), whose update skips
    itself on a device flag (engine/step_check.py). The CPU default is the unfused one, whose
    rounding every committed CPU result was made with."""
    params = [p for p in algorithm.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("algorithm: has no trainable parameters to meta-optimise")
    name, lr, wd = str(cfg.solver.optimizer).lower(), float(cfg.solver.lr), float(cfg.solver.weight_decay)
    if not lr > 0:
        raise ConfigError(f"solver.lr: must be > 0, got {lr}")
    fused = cfg.solver.get("fused", "auto")
    fused = params[0].device.type == "cuda" if fused == "auto" else bool(fused)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, fused=fused or None)
    raise ConfigError(f"solver.optimizer: unknown optimizer '{cfg.solver.optimizer}' (choose adam or sgd)")


def build_lr_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer):
    """A per-iteration ``LambdaLR``: linear warmup over ``solver.warmup_iters``, then
    ``constant`` or ``cosine`` (decay to ``solver.min_lr`` at ``solver.max_iter``; MAML++'s
    cosine annealing of the meta learning rate)."""
    schedule = str(cfg.solver.lr_schedule).lower()
    warmup, max_iter = int(cfg.solver.warmup_iters), int(cfg.solver.max_iter)
    floor = float(cfg.solver.get("min_lr", 0.0)) / float(cfg.solver.lr)
    if not 0.0 <= floor < 1.0:
        raise ConfigError(f"solver.min_lr: must be >= 0 and below solver.lr={cfg.solver.lr}, got "
                          f"{cfg.solver.get('min_lr')}")
    if schedule not in ("constant", "cosine"):
        raise ConfigError(f"solver.lr_schedule: unknown schedule '{cfg.solver.lr_schedule}' "
                          "(choose constant or cosine)")
    if warmup < 0:
        raise ConfigError(f"solver.warmup_iters: must be >= 0, got {warmup}")

    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (it - warmup) / max(1, max_iter - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
