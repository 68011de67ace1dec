"""The training loop: ``TrainerBase`` (iterations + hooks) and ``MetaTrainer`` (one update).

detectron2's shape, kept small. ``TrainerBase.train`` runs ``run_step`` from ``start_iter`` to
``max_iter`` and calls every hook's ``before_train / before_step / after_step / after_train``
around it; hooks do everything else (lr schedule, evaluation, checkpoints, logging), so the
loop itself stays readable. ``MetaTrainer.run_step`` is the whole update::

    batch = sampler.next_batch().to(device)
    optimizer.zero_grad(set_to_none=True)
    out = algorithm.forward_backward(batch, iter)   # or: out = algorithm(batch); out["loss"].backward()
    optimizer.step()

The trainer knows nothing about meta-learning: the algorithm's ``forward_backward`` does the
backward its own way (in chunks, say) and returns a dict with a 0-dim ``loss``; every 0-dim
entry is a scalar metric recorded in an :class:`EventStorage` for the writers. When the loss is
not finite, the algorithm's optional ``diagnose(out, rank)`` says where it came from
(:mod:`models.algorithms.step` implements both for the algorithms here).
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

from lil_meta.engine.checkpoint import get_rng_state, set_rng_state
from lil_meta.engine.launch import World, average_gradients, average_scalars

logger = logging.getLogger(__name__)

__all__ = ["EventStorage", "TrainerBase", "MetaTrainer", "NumericalFault"]


def _is_scalar(value: Any) -> bool:
    return (isinstance(value, torch.Tensor) and value.dim() == 0) or isinstance(value, (int, float))


def _float(value: torch.Tensor | float) -> float:
    return float(value.detach().item() if isinstance(value, torch.Tensor) else value)


class NumericalFault(FloatingPointError):
    """A NaN/inf in the loss or the meta-gradient that the ``on_nonfinite`` policy does not
    absorb. ``state`` is the trainer's state from before the failing iteration (a checkpoint of
    the last good state: resuming from it repeats that iteration)."""

    def __init__(self, message: str, state: dict[str, Any]):
        super().__init__(message)
        self.state = state


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
    """One optimizer update per iteration on a batch from ``sampler``.

    Args:
        algorithm: ``nn.Module`` whose ``forward(batch)`` returns the loss/metric dict; when it
            has ``forward_backward(batch, step)`` (forward, backward, the dict) the trainer calls
            that instead, with ``step`` the iteration, and its optional ``diagnose(out, rank)``
            (a sentence or ``None``) completes the message on a non-finite loss.
        sampler: object with ``next_batch()`` and ``state_dict``/``load_state_dict``; a batch has
            ``to(device)`` and may have ``counts`` (``{unit: n}``, logged as ``<unit>_per_s``).
        optimizer: the meta-optimizer over the algorithm's parameters.
        device: where the batch is moved before the forward pass.
        world: the run's processes (:mod:`engine.launch`); with several, ``sampler`` yields this
            process's share of the batch and the gradients and logged scalars are averaged over
            the processes after each backward.
        on_nonfinite, max_skips, clip_grad_norm: numerical faults (``solver.*``, docs/errors.md).
    """

    def __init__(self, algorithm: torch.nn.Module, sampler, optimizer: torch.optim.Optimizer,
                 device: torch.device | str = "cpu", world: World | None = None, on_nonfinite: str = "stop",
                 max_skips: int = 10, clip_grad_norm: float = 0.0) -> None:
        super().__init__()
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"solver.on_nonfinite: expected stop or skip, got '{on_nonfinite}'")
        self.algorithm = algorithm
        self.sampler = sampler
        self.optimizer = optimizer
        self.device = torch.device(device)
        self.world = world or World()
        self.on_nonfinite, self.max_skips = on_nonfinite, int(max_skips)
        self.clip_grad_norm = float(clip_grad_norm)
        self.skipped = 0  # batches skipped for non-finite values, over the whole run
        self.algorithm.train()

    def run_step(self) -> None:
        start = time.perf_counter()
        before = {"sampler": self.sampler.state_dict(), "rng": get_rng_state()}  # for a fault
        batch = self.sampler.next_batch().to(self.device)
        data_time = time.perf_counter() - start

        self.optimizer.zero_grad(set_to_none=True)
        out = self._forward_backward(batch)
        scalars = {k: _float(v) for k, v in out.items() if _is_scalar(v)}
        local_finite = math.isfinite(scalars["loss"])
        scalars = average_scalars(scalars, self.world)
        if not math.isfinite(scalars["loss"]):
            fault = self._describe_loss_fault(scalars, None if local_finite else out)
        else:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            average_gradients(params, self.world)
            fault = self._clip_and_check_gradients(params, scalars)
        if fault is not None:
            self._handle_fault(fault, before)
            return
        self.optimizer.step()

        step_time = time.perf_counter() - start
        rates = {f"{unit}_per_s": n * self.world.size / max(step_time, 1e-9)
                 for unit, n in getattr(batch, "counts", {}).items()}
        self.storage.put_scalars(**scalars, time=step_time, data_time=data_time, **rates)

    def _forward_backward(self, batch) -> dict[str, Any]:
        """The algorithm's ``forward_backward``, else its forward and, for a finite loss, the
        backward; the output dict."""
        forward_backward = getattr(self.algorithm, "forward_backward", None)
        if forward_backward is not None:
            out = forward_backward(batch, self.iter)
        else:
            out = self.algorithm(batch)
        if "loss" not in out:
            raise KeyError("algorithm output has no 0-dim 'loss' entry to minimise")
        if forward_backward is None and math.isfinite(float(out["loss"].detach())):
            out["loss"].backward()
        return out

    # ---- numerical faults ---------------------------------------------------------------------
    def _describe_loss_fault(self, scalars: dict[str, float], out: dict | None) -> str:
        """Which terms are non-finite, and where the algorithm says they came from (``out``:
        this process's output, ``None`` when its own loss was finite)."""
        terms = ", ".join(f"{k}={v}" for k, v in scalars.items() if not math.isfinite(v) and k.startswith("loss"))
        if out is None:
            return f"non-finite loss ({terms}) on another process"
        diagnose = getattr(self.algorithm, "diagnose", None)
        where = diagnose(out, self.world.rank) if diagnose is not None else None
        return f"non-finite loss ({terms})" + (f": {where}" if where else "")

    def _clip_and_check_gradients(self, params: list[torch.Tensor], scalars: dict[str, float]) -> str | None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return None
        if self.clip_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scalars["grad_norm"] = float(norm)
        return None if math.isfinite(scalars["grad_norm"]) else "non-finite meta-gradient (the loss was finite)"

    def _handle_fault(self, fault: str, before: dict[str, Any]) -> None:
        """``skip``: drop this batch (up to ``max_skips`` in the run); ``stop`` or past the limit:
        raise :class:`NumericalFault` carrying the state from before this iteration."""
        self.optimizer.zero_grad(set_to_none=True)
        message = f"iteration {self.iter}: {fault}"
        if self.on_nonfinite == "skip" and self.skipped < self.max_skips:
            self.skipped += 1
            logger.warning("%s; batch skipped (%d of at most %d, solver.max_skips)", message, self.skipped,
                           self.max_skips)
            self.storage.put_scalar("skipped", self.skipped)
            return
        state = self.state_dict()
        state.update(iteration=self.iter, sampler=before["sampler"], rng=before["rng"])
        limit = f" after {self.skipped} skipped batches (solver.max_skips)" if self.on_nonfinite == "skip" else ""
        raise NumericalFault(f"{message}{limit}; training stopped", state)

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
        state["skipped"] = self.skipped
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
        self.skipped = int(state.get("skipped", 0))
        self.iter = self.start_iter = int(state["iteration"])
        return self.start_iter
