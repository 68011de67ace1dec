"""The life of a run's output folder: checked, locked, read, set up, released.

A :class:`RunFolder` is made once the config is loaded. :meth:`~RunFolder.check` refuses a
folder that cannot take the run before anything is built; :meth:`~RunFolder.open`, after the
components are built, takes the folder's lock (:mod:`engine.run_lock`, main process only),
checks it again under the lock (a run that finished meanwhile), reads the checkpoint to resume,
to test, or to start from (``--weights``), removes what a dead writer left, and sets the folder
up (``config.yaml``, logging, seeds: :func:`engine.defaults.default_setup`).
:meth:`~RunFolder.release` gives the lock back, undoing the folder's creation when nothing was
set up yet. Nothing here builds or trains.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from lil_meta.engine.checkpoint import Checkpointer
from lil_meta.engine.defaults import check_output_dir, default_setup
from lil_meta.engine.errors import CheckpointError, ConfigError
from lil_meta.engine.fileio import remove_stale_temps
from lil_meta.engine.launch import World
from lil_meta.engine.resume import check_folder_config, held_back_warnings, init_from_weights
from lil_meta.engine.run_lock import RunLock, acquire

logger = logging.getLogger(__name__)

__all__ = ["RunFolder", "RESUMABLE"]

#: what a checkpoint must hold to resume training from it
RESUMABLE = ("iteration", "model", "optimizer", "sampler", "rng")


class RunFolder:
    """One run's output folder (module doc). ``resume_state``: the checkpoint ``--resume`` read;
    ``eval_weights``/``eval_state``: the one ``--eval-only`` tests; ``notes``: lines logged once
    ``log.txt`` is set up."""

    def __init__(self, cfg: DictConfig, args: argparse.Namespace, world: World) -> None:
        self.cfg, self.args, self.world = cfg, args, world
        self.checkpointer = Checkpointer(cfg.output_dir, cfg.solver.keep_checkpoints, cfg, writer=world.is_main)
        self.lock: RunLock | None = None
        self.resume_state: dict | None = None
        self.eval_weights: Path | None = None
        self.eval_state: dict | None = None
        self.notes: list[tuple[int, str]] = []

    @property
    def path(self) -> Path:
        return Path(self.cfg.output_dir)

    def check(self) -> None:
        """Refuse a folder that cannot take this run, and ``--weights`` that do not fit (reads only)."""
        args = self.args
        if self.world.is_main:
            check_output_dir(self.cfg, resume=args.resume, eval_only=args.eval_only)
        if args.weights and not Path(args.weights).is_file():
            raise CheckpointError(f"--weights {args.weights}: checkpoint not found")
        if args.weights and args.resume and not args.eval_only:
            raise ConfigError("--weights starts a new run from those weights; --resume continues the "
                              "folder's own run: pass one of them")

    def open(self, algorithm: torch.nn.Module) -> None:
        """Lock, check again, read the checkpoint (``--weights`` go into ``algorithm``), remove
        stale temporaries, set up; on failure the lock is given back and a folder this call
        created is removed."""
        self.lock = acquire(self.cfg.output_dir) if self.world.is_main else None
        try:
            self._read(algorithm)
            if self.lock is not None:
                self.lock.mark_owner()
                stale = remove_stale_temps(self.path, owned=True)
                self.notes += [(logging.WARNING, f"removed {p.name}, left by a process that died while writing it")
                               for p in stale]
            default_setup(self.cfg, self.args, self.world)
        except BaseException:
            self.release(undo=True)
            raise

    def _read(self, algorithm: torch.nn.Module) -> None:
        cfg, args, checkpointer = self.cfg, self.args, self.checkpointer
        if self.world.is_main:
            check_output_dir(cfg, resume=args.resume, eval_only=args.eval_only)
        if args.eval_only:
            self.eval_weights = self._eval_weights()
            self.eval_state = checkpointer.load(self.eval_weights)
            return
        if args.resume:
            if self.world.is_main and not checkpointer.has_checkpoint():
                check_folder_config(self.path, checkpointer)
            with held_back_warnings(self.notes):
                self.resume_state = checkpointer.resume_or_load(resume=True, required=RESUMABLE)
            if self.resume_state is None and (self.path / "config.yaml").is_file():
                self.notes.append((logging.WARNING, f"--resume: {self.path} holds no checkpoint yet (its run "
                                                    "stopped before the first one); starting from iteration 0"))
        if args.weights:
            self.notes.append((logging.INFO, init_from_weights(algorithm, checkpointer, Path(args.weights))))

    def _eval_weights(self) -> Path:
        """The checkpoint ``--eval-only`` tests: ``--weights``, else model_final, else the last one."""
        if self.args.weights:
            return Path(self.args.weights)
        final = self.path / "model_final.pth"
        if final.is_file():
            return final
        last = self.checkpointer.get_checkpoint_file()
        if last is None:
            raise CheckpointError(f"{final}: checkpoint not found (and no last_checkpoint in "
                                  f"{self.cfg.output_dir}); train first or pass --weights")
        return last

    def release(self, undo: bool = False) -> None:
        if self.lock is not None:
            self.lock.release(undo=undo)
            self.lock = None
