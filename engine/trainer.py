"""The training loop: ``TrainerBase`` (iterations + hooks) and ``MetaTrainer`` (one meta-step).

detectron2's shape, kept small. ``TrainerBase.train`` runs ``run_step`` from ``start_iter`` to
``max_iter`` and calls every hook's ``before_train / before_step / after_step / after_train``
around it; hooks do everything else (lr schedule, evaluation, checkpoints, logging), so the
loop itself stays readable. ``MetaTrainer.run_step`` is the whole meta-update::

    batch = sampler.next_batch().to(device)
    out = algorithm(batch)                 # dict: "loss", metric scalars, "task_acc"
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizer.step()

The trainer knows nothing about meta-learning beyond that dict: every 0-dim entry of ``out``
is a scalar metric recorded in an :class:`EventStorage` for the writers.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Any

import torch

from engine.checkpoint import get_rng_state, set_rng_state
from engine.launch import World, average_gradients, average_scalars

logger = logging.getLogger(__name__)

__all__ = ["EventStorage", "TrainerBase", "MetaTrainer"]


class EventStorage:
    """Scalar metrics by name, each a bounded history of ``(iteration, value)`` pairs.

    Hooks put values at ``storage.iter`` (the current iteration, 0-based); writers read the
    mean over a window of iterations. Only Python floats are stored.
    """

    def __init__(self, start_iter: int = 0, max_history: int = 20_000) -> None:
        self.iter = start_iter
        self._history: dict[str, deque] = defaultdict(lambda: deque(maxlen=max_history))

    def put_scalar(self, name: str, value: float) -> None:
        self._history[name].append((self.iter, float(value)))

    def put_scalars(self, **scalars: float) -> None:
        for name, value in scalars.items():
            self.put_scalar(name, value)

    def history(self, name: str) -> list[tuple[int, float]]:
        return list(self._history.get(name, ()))

    def latest(self) -> dict[str, tuple[int, float]]:
        """The last ``(iteration, value)`` of every metric."""
        return {name: values[-1] for name, values in self._history.items() if values}

    def window_means(self, first_iter: int) -> dict[str, float]:
        """Mean of each metric over the entries put at iterations ``>= first_iter``."""
        means = {}
        for name, values in self._history.items():
            window = [v for it, v in values if it >= first_iter]
            if window:
                means[name] = sum(window) / len(window)
        return means


class HookBase:
    """A training-loop hook. ``self.trainer`` is set by :meth:`TrainerBase.register_hooks`.

    A hook that must survive a resume sets ``state_key`` and implements ``state_dict`` /
    ``load_state_dict``; its state is stored under that key of the checkpoint.
    """

    trainer: TrainerBase
    state_key: str | None = None

    def before_train(self) -> None: ...

    def after_train(self) -> None: ...

    def before_step(self) -> None: ...

    def after_step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainerBase:
    """Iterations and hooks; subclasses implement :meth:`run_step`.

    ``iter`` is the index of the iteration being run (0-based); after a completed
    ``train`` it equals ``max_iter``, so ``after_train`` hooks can tell a finished run
    (``iter == max_iter``) from one stopped by an exception.
    """

    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.iter = 0
        self.start_iter = 0
        self.max_iter = 0
        self.storage = EventStorage()

    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        """Append hooks (``None`` entries are skipped); they run in registration order."""
        for hook in hooks:
            if hook is None:
                continue
            # A weak proxy avoids a trainer <-> hook reference cycle.
            hook.trainer = weakref.proxy(self)
            self._hooks.append(hook)

    @property
    def hooks(self) -> list[HookBase]:
        return list(self._hooks)

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter-1``; ``after_train`` runs even on failure."""
        logger.info("starting training from iteration %d to %d", start_iter, max_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        self.storage.iter = start_iter
        try:
            self.before_train()
            for self.iter in range(start_iter, max_iter):
                self.storage.iter = self.iter
                self.before_step()
                self.run_step()
                self.after_step()
            # After a full run iter == max_iter (range leaves it at max_iter - 1).
            self.iter = max(start_iter, max_iter)
        finally:
            self.after_train()

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        for h in self._hooks:
            h.before_step()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError


class MetaTrainer(TrainerBase):
    """One meta-update per iteration on a batch of tasks from ``sampler``.

    Args:
        algorithm: ``nn.Module`` whose ``forward(task_batch)`` returns the loss/metric dict.
        sampler: object with ``next_batch() -> TaskBatch`` and ``state_dict``/``load_state_dict``.
        optimizer: the meta-optimizer over the algorithm's parameters.
        device: where the batch is moved before the forward pass.
        world: the run's processes (:mod:`engine.launch`); with several, ``sampler`` yields this
            process's share of the tasks and the meta-gradients and logged scalars are averaged
            over the processes after each backward.
    """

    def __init__(self, algorithm: torch.nn.Module, sampler, optimizer: torch.optim.Optimizer,
                 device: torch.device | str = "cpu", world: World | None = None) -> None:
        super().__init__()
        self.algorithm = algorithm
        self.sampler = sampler
        self.optimizer = optimizer
        self.device = torch.device(device)
        self.world = world or World()
        self.algorithm.train()

    def run_step(self) -> None:
        start = time.perf_counter()
        batch = self.sampler.next_batch().to(self.device)
        data_time = time.perf_counter() - start

        out = self.algorithm(batch)
        scalars = {k: float(v.detach().item()) if isinstance(v, torch.Tensor) else float(v)
                   for k, v in out.items()
                   if (isinstance(v, torch.Tensor) and v.dim() == 0) or isinstance(v, (int, float))}
        scalars = average_scalars(scalars, self.world)
        self._check_finite(scalars)

        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if self.world.distributed:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            average_gradients(params, self.world)
        self.optimizer.step()

        step_time = time.perf_counter() - start
        tasks = batch.num_tasks * self.world.size
        self.storage.put_scalars(**scalars, time=step_time, data_time=data_time,
                                 tasks_per_s=tasks / max(step_time, 1e-9))

    def _check_finite(self, scalars: dict[str, float]) -> None:
        if "loss" not in scalars:
            raise KeyError("algorithm output has no 0-dim 'loss' entry to minimise")
        if math.isfinite(scalars["loss"]):
            return
        bad = ", ".join(f"{k}={v}" for k, v in scalars.items() if not math.isfinite(v))
        raise FloatingPointError(
            f"iteration {self.iter}: the loss is not finite ({bad}); training diverged, "
            f"try a lower solver.lr or algorithm.inner_lr"
        )

    # ---- state for exact resumption ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs. Called from ``after_step`` (by the checkpointer), so
        ``iteration`` = ``iter + 1`` counts the iterations completed: the one to resume at."""
        state = {
            "iteration": self.iter + 1,
            "model": self.algorithm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": get_rng_state(),
        }
        for hook in self._hooks:
            if hook.state_key:
                state[hook.state_key] = hook.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore a :meth:`state_dict`; returns the iteration to start from."""
        self.algorithm.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        for hook in self._hooks:
            if hook.state_key and hook.state_key in state:
                hook.load_state_dict(state[hook.state_key])
        set_rng_state(state["rng"])
        self.iter = self.start_iter = int(state["iteration"])
        return self.start_iter
