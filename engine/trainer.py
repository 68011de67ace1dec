"""The training loop: ``TrainerBase`` (iterations + hooks) and ``MetaTrainer`` (one update).

detectron2's shape, kept small. ``TrainerBase.train`` runs ``run_step`` from ``start_iter`` to
``max_iter`` and calls every hook's ``before_train / before_step / after_step / after_train``
around it; hooks do everything else (lr schedule, evaluation, checkpoints, logging), so the
loop itself stays readable. ``MetaTrainer.run_step`` is the whole update::

    batch = batches.next_batch()                  # drawn while the previous step ran
    optimizer.zero_grad(set_to_none=True)
    algorithm.begin_step(iter)                    # once-per-step work (a teacher's EMA)
    out = algorithm(batch, step=iter); out["loss"].backward()   # chunk by chunk with task_chunk
    optimizer.step()                              # unless the loss or the gradient is not finite

The trainer knows nothing about meta-learning: the algorithm is a :class:`MetaAlgorithm`
whose call returns a dict with a 0-dim ``loss``; every 0-dim entry is a scalar metric recorded
in an :class:`EventStorage` for the writers. Whether the loss and the meta-gradient are finite
is one device flag. With a fused optimizer (``solver.fused``, the default on CUDA) the update
skips itself on that flag and the host reads it one step later (:mod:`engine.step_check`): a
non-logging step waits on nothing. With another optimizer the step reads the flag before
updating (on the CPU that read costs nothing). The metrics stay tensors until a writer asks.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

import torch

from lil_meta.engine.events import EventStorage
from lil_meta.engine.launch import World, average_gradients, average_scalars
from lil_meta.engine.precision import Precision
from lil_meta.engine.prefetch import Prefetcher
from lil_meta.engine.rng import get_rng_state, set_rng_state
from lil_meta.engine.step_check import FiniteFlag, NumericalFault, PendingStep, supports_found_inf
from lil_meta.engine.task_chunks import AutoTaskChunks, forward_backward, is_scalar, loss_of

logger = logging.getLogger(__name__)

__all__ = ["EventStorage", "TrainerBase", "MetaTrainer", "MetaAlgorithm", "NumericalFault", "is_scalar"]


class MetaAlgorithm(Protocol):
    """What the trainer calls: an ``nn.Module`` (``train``, ``parameters``, ``state_dict``) with

    - ``begin_step(step)``: once per training step, before its forward passes;
    - ``algorithm(batch, step=step)``: the output dict of a batch (or of a chunk of one), with a
      0-dim ``loss`` to minimise; ``step`` is the trainer's iteration;
    - ``diagnose(out, rank)``: where a non-finite loss in ``out`` came from, or ``None``;
    - optionally ``auto_task_chunk(device, step)``: the tasks per forward and backward that
      ``task_chunk="auto"`` means at that step (0: the whole batch; absent: the whole batch).
    """

    training: bool

    def begin_step(self, step: int) -> None: ...

    def __call__(self, batch: Any, step: int = 0) -> dict[str, Any]: ...

    def diagnose(self, out: dict[str, Any], rank: int = 0) -> str | None: ...

    def train(self, mode: bool = True) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


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
            self.end_steps()
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

    def end_steps(self) -> None:
        """After the last step's hooks, before ``after_train``: work a step left pending."""


class MetaTrainer(TrainerBase):
    """One optimizer update per iteration on a batch from ``sampler``.

    Args:
        algorithm: the :class:`MetaAlgorithm`.
        sampler: object with ``next_batch()`` and ``state_dict``/``load_state_dict``; a batch has
            ``num_tasks``, ``tasks(start, stop)``, ``to(device)``, ``pin_memory()`` and may have
            ``counts`` (``{unit: n}``, logged as ``<unit>_per_s``). Its next batch is drawn while
            a step runs (:class:`engine.prefetch.Prefetcher`).
        optimizer: the meta-optimizer over the algorithm's parameters.
        device: where the batch is moved before the forward pass.
        world: the run's processes (:mod:`engine.launch`); with several, ``sampler`` yields this
            process's share of the batch and the gradients and logged scalars are averaged over
            the processes after each backward.
        on_nonfinite, max_skips, clip_grad_norm: numerical faults (``solver.*``, docs/errors.md).
        task_chunk: forward and backward ``task_chunk`` tasks of a batch at a time (0: all at
            once), the same update with one chunk's graph alive at a time
            (:mod:`engine.task_chunks`). ``"auto"``: what the algorithm's ``auto_task_chunk``
            says (one task at a time on the per-task loop; the whole batch where tasks are
            batched, or none said), and where that runs out of device memory, the largest
            chunk that fits (:class:`~engine.task_chunks.AutoTaskChunks`).
        precision: the forward passes run in its ``autocast`` (:mod:`engine.precision`).

    With an optimizer that skips its update on a device flag (:func:`~engine.step_check.supports_found_inf`)
    the finiteness check is read one step late (:mod:`engine.step_check`); the skip or stop it
    leads to keeps its meaning, named for the iteration that was not finite.
    """

    def __init__(self, algorithm: MetaAlgorithm, sampler, optimizer: torch.optim.Optimizer, *,
                 device: torch.device | str = "cpu", world: World | None = None, on_nonfinite: str = "stop",
                 max_skips: int = 10, clip_grad_norm: float = 0.0, task_chunk: int | str = "auto",
                 precision: Precision | None = None) -> None:
        super().__init__()
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"solver.on_nonfinite: expected stop or skip, got '{on_nonfinite}'")
        self.algorithm = algorithm
        self.device = torch.device(device)
        self.batches = Prefetcher(sampler, self.device)
        self.optimizer = optimizer
        self.world = world or World()
        self.on_nonfinite, self.max_skips = on_nonfinite, int(max_skips)
        self.clip_grad_norm = float(clip_grad_norm)
        self.task_chunk = task_chunk if task_chunk == "auto" else int(task_chunk)
        self._auto_chunks = AutoTaskChunks(self.device)
        self.precision = precision or Precision("fp32", self.device.type)
        self.checks_on_device = supports_found_inf(optimizer)
        self._pending: PendingStep | None = None  # the last step, its verdict not read yet
        self.skipped = 0  # batches skipped for non-finite values, over the whole run
        self.algorithm.train()

    def run_step(self) -> None:
        start = time.perf_counter()
        before = {"sampler": self.batches.state_dict(), "rng": get_rng_state()}  # for a fault
        batch = self.batches.next_batch()
        data_time = time.perf_counter() - start

        self.optimizer.zero_grad(set_to_none=True)
        self.algorithm.begin_step(self.iter)
        out = self._forward_backward(batch)
        scalars = {k: v for k, v in out.items() if is_scalar(v)}
        scalars.update(average_scalars({k: v.detach() for k, v in scalars.items() if isinstance(v, torch.Tensor)},
                                       self.world))
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        agreed = average_gradients(params, self.world)
        grad_norm = self._clip_gradients(params)
        finite = torch.isfinite(scalars["loss"])
        if grad_norm is not None:
            finite = finite & torch.isfinite(grad_norm)
            scalars["grad_norm"] = grad_norm
        if agreed is not None:  # several processes: the same parameters had gradients on each
            finite = finite & agreed
            out = {**out, "grads_agreed": agreed}
        if self.checks_on_device:
            self._settle_pending()  # the previous step's verdict, before this step's update
            self._update_unless(finite)
            self._pending = PendingStep(self.iter, FiniteFlag(finite), scalars, _detached(out), before)
        elif not bool(finite):  # the step's one read from the device
            self._handle_fault(self._describe_fault(scalars, out), before, self.iter)
            return
        else:
            self.optimizer.step()

        step_time = time.perf_counter() - start
        rates = {f"{unit}_per_s": n * self.world.size / max(step_time, 1e-9)
                 for unit, n in getattr(batch, "counts", {}).items()}
        self.storage.put_scalars(valid=finite if self.checks_on_device else None, **scalars, time=step_time,
                                 data_time=data_time, **rates)

    def _forward_backward(self, batch) -> dict[str, Any]:
        """The algorithm's output on ``batch`` after its backward, whole or chunk by chunk."""
        if self.task_chunk == "auto":
            return self._auto_chunks.forward_backward(self.algorithm, batch, self.iter, self.optimizer,
                                                      self.precision.autocast)
        return forward_backward(self.algorithm, batch, self.iter, self.task_chunk, self.precision.autocast)

    def _update_unless(self, finite: torch.Tensor) -> None:
        """The optimizer's update, which leaves every parameter and moment as it was where
        ``finite`` is false (its ``found_inf``); nothing is read from the device."""
        self.optimizer.found_inf = (~finite).to(torch.float32)  # type: ignore[attr-defined]
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf  # type: ignore[attr-defined]

    def _settle_pending(self) -> None:
        """Act on the verdict of the step before, if it was not finite (:meth:`_handle_fault`)."""
        pending, self._pending = self._pending, None
        if pending is not None and not pending.finite.value():
            self._handle_fault(self._describe_fault(pending.scalars, pending.out), pending.before, pending.iteration)

    def end_steps(self) -> None:
        self._settle_pending()

    # ---- numerical faults ---------------------------------------------------------------------
    def _clip_gradients(self, params: list[torch.Tensor]) -> torch.Tensor | None:
        """The meta-gradient's global norm (before clipping, with ``clip_grad_norm``), a tensor."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return None
        if self.clip_grad_norm > 0:
            return torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

    def _describe_fault(self, scalars: dict[str, torch.Tensor], out: dict[str, Any]) -> str:
        """Which terms are non-finite, and where the algorithm says they came from (when this
        process's own loss was not finite); else a non-finite meta-gradient."""
        if "grads_agreed" in out and not bool(out["grads_agreed"]):
            return ("the processes disagree on which parameters have a gradient (the loss reaches "
                    "different parameters on different processes); no update")
        if bool(torch.isfinite(scalars["loss"])):
            return "non-finite meta-gradient (the loss was finite)"
        terms = ", ".join(f"{k}={float(v)}" for k, v in scalars.items()
                          if k.startswith("loss") and not math.isfinite(float(v)))
        if bool(torch.isfinite(loss_of(out).detach())):
            return f"non-finite loss ({terms}) on another process"
        where = self.algorithm.diagnose(out, self.world.rank)
        return f"non-finite loss ({terms})" + (f": {where}" if where else "")

    def _handle_fault(self, fault: str, before: dict[str, Any], iteration: int) -> None:
        """``skip``: drop the batch of ``iteration`` (up to ``max_skips`` in the run); ``stop``
        or past the limit: raise :class:`NumericalFault` carrying the state from before it.
        Read one step late, ``iteration`` is the step before this one: its update changed
        nothing, and this step's has not run, so the parameters and moments are those from
        before it."""
        if iteration == self.iter:
            self.optimizer.zero_grad(set_to_none=True)
        message = f"iteration {iteration}: {fault}"
        if self.on_nonfinite == "skip" and self.skipped < self.max_skips:
            self.skipped += 1
            logger.warning("%s; batch skipped (%d of at most %d, solver.max_skips)", message, self.skipped,
                           self.max_skips)
            self.storage.put_scalar("skipped", self.skipped)
            return
        state = self.state_dict()
        state.update(iteration=iteration, sampler=before["sampler"], rng=before["rng"])
        limit = f" after {self.skipped} skipped batches (solver.max_skips)" if self.on_nonfinite == "skip" else ""
        raise NumericalFault(f"{message}{limit}; training stopped", state)

    def after_train(self) -> None:
        super().after_train()
        self.batches.close()

    # ---- state for exact resumption ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs. Called from ``after_step`` (by the checkpointer), so
        ``iteration`` = ``iter + 1`` counts the iterations completed: the one to resume at."""
        state = {
            "iteration": self.iter + 1,
            "model": self.algorithm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.batches.state_dict(),
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
        self.batches.load_state_dict(state["sampler"])
        for hook in self._hooks:
            if hook.state_key and hook.state_key in state:
                hook.load_state_dict(state[hook.state_key])
        set_rng_state(state["rng"])
        self.skipped = int(state.get("skipped", 0))
        self.iter = self.start_iter = int(state["iteration"])
        return self.start_iter


def _detached(out: dict[str, Any]) -> dict[str, Any]:
    """``out``'s tensors without their graphs (what a fault's description reads later)."""
    return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
