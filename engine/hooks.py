"""Training hooks: timing, lr schedule, evaluation, checkpoints, logging.

Register them in this order (:func:`engine.runner.build_trainer` does) so that, within one iteration, the
lr is stepped and the validation result is known before the checkpoint captures the state, and
the writer sees everything the others recorded::

    IterationTimer, LRScheduler, EvalHook, PeriodicCheckpointer, PeriodicWriter

Periodic hooks fire when ``(iter + 1) % period == 0`` and after the last iteration, so a run
of ``max_iter`` iterations always ends with an evaluation, a checkpoint and a log line.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from lil_meta.engine.checkpoint import Checkpointer
from lil_meta.engine.evaluation import evaluate
from lil_meta.engine.trainer import HookBase

logger = logging.getLogger(__name__)

__all__ = ["HookBase", "IterationTimer", "LRScheduler", "EvalHook", "PeriodicCheckpointer",
           "PeriodicWriter", "PhaseBoundary"]


def _due(trainer, period: int) -> bool:
    """Whether the iteration that just finished is a multiple of ``period`` or the last one."""
    done = trainer.iter + 1
    return (period > 0 and done % period == 0) or done == trainer.max_iter


def _logged_iter(line: str) -> float:
    """The ``iter`` of a ``metrics.jsonl`` line; a blank or half-written line counts as past any."""
    try:
        return float(json.loads(line)["iter"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


class IterationTimer(HookBase):
    """Wall time of whole iterations (hooks included) and of the run; accumulated over resumes."""

    state_key = "timer"

    def __init__(self) -> None:
        self.total_s = 0.0  # training wall time over this run and the runs it resumes
        self.resumed_s = 0.0  # the part of total_s spent by the runs this one resumes
        self._start = self._step_start = 0.0

    def before_train(self) -> None:
        self._start = time.perf_counter()
        self.resumed_s = self.total_s

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        now = time.perf_counter()
        self.trainer.storage.put_scalar("iter_time", now - self._step_start)
        self.total_s = self.resumed_s + now - self._start

    def after_train(self) -> None:
        self.total_s = self.resumed_s + time.perf_counter() - self._start
        done = self.trainer.iter - self.trainer.start_iter
        if done > 0:
            logger.info("trained %d iterations in %.1f s (%.3f s/it)", done,
                        time.perf_counter() - self._start, (time.perf_counter() - self._start) / done)

    def state_dict(self) -> dict[str, Any]:
        return {"total_s": self.total_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_s = float(state["total_s"])


class LRScheduler(HookBase):
    """Records the lr used by this iteration as ``lr``, then steps a per-iteration scheduler."""

    state_key = "scheduler"

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler) -> None:
        self.optimizer, self.scheduler = optimizer, scheduler

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("lr", self.optimizer.param_groups[0]["lr"])
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


class PhaseBoundary(HookBase):
    """Start the second training phase (:mod:`models.algorithms.chain`) with a fresh optimizer.

    Before iteration ``iteration`` the optimizer's per-parameter state (Adam's moments) is
    cleared, so the main algorithm starts from the pretrained weights the way a separate run
    initialised from them would. The lr schedule keeps counting over the whole run. A run resumed
    past the boundary restores the state it had then, so resuming stays exact.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, iteration: int) -> None:
        self.optimizer, self.iteration = optimizer, int(iteration)

    def before_step(self) -> None:
        if self.trainer.iter == self.iteration:
            self.optimizer.state.clear()
            logger.info("iteration %d: pretraining done, main algorithm from here "
                        "(optimizer state reset)", self.iteration)


class EvalHook(HookBase):
    """Validation accuracy every ``period`` iterations and at the end; keeps the best weights.

    The accuracy over the fixed ``task_list`` is put in the storage as ``val/acc`` (and
    ``val/ci95``). When it beats the best so far, the algorithm's weights are saved as
    ``model_best.pth``. Evaluation leaves the training RNG stream untouched (see
    :func:`engine.evaluation.evaluate`), so it never changes the weights a run ends with.
    """

    state_key = "eval"

    def __init__(self, period: int, task_list, checkpointer: Checkpointer, batch_size: int,
                 device: torch.device | str) -> None:
        self.period, self.task_list, self.checkpointer = int(period), task_list, checkpointer
        self.batch_size, self.device = int(batch_size), device
        self.best_acc: float | None = None
        self.best_iter: int | None = None

    def after_step(self) -> None:
        if _due(self.trainer, self.period):
            self.run_eval()

    def run_eval(self) -> dict[str, float]:
        trainer = self.trainer
        done = trainer.iter + 1
        result = evaluate(trainer.algorithm, self.task_list, self.batch_size, self.device,
                          desc=f"val @ {done}", world=getattr(trainer, "world", None),
                          precision=getattr(trainer, "precision", None))
        trainer.storage.put_scalars(**{"val/acc": result["acc"], "val/ci95": result["ci95"]})
        logger.info("iteration %d: val accuracy %.2f ± %.2f %% (%d tasks)", done,
                    result["acc"], result["ci95"], result["n"])
        if self.best_acc is None or result["acc"] > self.best_acc:
            self.best_acc, self.best_iter = result["acc"], done
            self.checkpointer.save("model_best", model=trainer.algorithm.state_dict(),
                                   iteration=done, val_acc=result["acc"])
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"best_acc": self.best_acc, "best_iter": self.best_iter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_acc, self.best_iter = state["best_acc"], state["best_iter"]


class PeriodicCheckpointer(HookBase):
    """Saves the full training state every ``period`` iterations and after the last one."""

    def __init__(self, checkpointer: Checkpointer, period: int) -> None:
        self.checkpointer, self.period = checkpointer, int(period)

    def after_step(self) -> None:
        if _due(self.trainer, self.period):
            self.checkpointer.save(f"model_{self.trainer.iter:07d}", **self.trainer.state_dict())


class PeriodicWriter(HookBase):
    """Every ``period`` iterations (and after the last): TensorBoard, ``metrics.jsonl``, console.

    Each logged value is the mean over the iterations since the previous log step. One tqdm
    bar over ``max_iter`` advances every iteration (shown on a terminal only); on log steps the main metrics go to its
    postfix and a full line to the logger (console and ``log.txt``). On resume, lines of
    ``metrics.jsonl`` past the resumed iteration (logged after the last checkpoint by the
    interrupted run) are dropped, so the file reads like one uninterrupted run.
    """

    POSTFIX = ("loss", "acc", "val/acc", "lr")

    def __init__(self, output_dir: str | Path, period: int, tensorboard: bool = True) -> None:
        self.output_dir, self.period, self.tensorboard = Path(output_dir), int(period), tensorboard
        self._tb = self._bar = self._jsonl = None
        self._window_start = 0

    def before_train(self) -> None:
        start = self.trainer.start_iter
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / "metrics.jsonl"
        if path.exists():  # keep only what precedes the resumed iteration
            kept = [line for line in path.read_text().splitlines() if _logged_iter(line) <= start]
            path.write_text("".join(line + "\n" for line in kept))
        self._jsonl = path.open("a")
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.output_dir), purge_step=start + 1 if start else None)
        self._bar = tqdm(total=self.trainer.max_iter, initial=start, desc="train",
                         dynamic_ncols=True, leave=True, disable=None)
        self._window_start = start

    def after_step(self) -> None:
        self._bar.update(1)
        if _due(self.trainer, self.period):
            self.write()

    def write(self) -> None:
        """Log the window means of every scalar at step ``iter + 1`` (iterations done)."""
        step = self.trainer.iter + 1
        means = self.trainer.storage.window_means(self._window_start)
        self._window_start = self.trainer.iter + 1
        if not means:
            return
        self._jsonl.write(json.dumps({"iter": step, **means}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in means.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        self._bar.set_postfix({k: f"{means[k]:.4g}" for k in self.POSTFIX if k in means}, refresh=False)
        logger.info("iter %d/%d  %s", step, self.trainer.max_iter,
                    "  ".join(f"{k}: {v:.4g}" for k, v in means.items()))

    def after_train(self) -> None:
        for handle in (self._jsonl, self._tb, self._bar):
            if handle is not None:
                handle.close()
        self._jsonl = self._tb = self._bar = None
