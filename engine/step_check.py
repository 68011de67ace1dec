"""Whether a training step's loss and meta-gradient were finite, known on the device and read
by the host one step later (:class:`engine.trainer.MetaTrainer` with a fused optimizer).

A fused optimizer (``torch.optim.Adam(fused=True)``, ``SGD(fused=True)``) takes a ``found_inf``
tensor and leaves every parameter and every moment unchanged where it is non-zero, so the
decision to skip an update needs no host read. The host learns the step's verdict from a copy
made right after it (:class:`FiniteFlag`: pinned memory and a CUDA event on a GPU) while the
next step already runs, and acts on it — warn and count a skipped batch, or stop with the state
from before the bad step — before that next step's own update (:class:`PendingStep`). No
update is ever applied on top of an unread verdict, so a stop still has the state from before
the bad step at hand: the parameters and the optimizer's moments are those the bad step left
unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["NumericalFault", "FiniteFlag", "PendingStep", "supports_found_inf"]


class NumericalFault(FloatingPointError):
    """A NaN/inf in the loss or the meta-gradient that the ``on_nonfinite`` policy does not
    absorb. ``state`` is the trainer's state from before the failing iteration (a checkpoint of
    the last good state: resuming from it repeats that iteration)."""

    def __init__(self, message: str, state: dict[str, Any]):
        super().__init__(message)
        self.state = state


def supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` skips its update on a device flag (the fused Adam and SGD)."""
    return bool(getattr(optimizer, "defaults", {}).get("fused")) and isinstance(
        optimizer, (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD))


class FiniteFlag:
    """A 0-dim boolean on the device, copied to the host without waiting: on CUDA into pinned
    memory behind an event; :meth:`value` polls the event (``query`` never synchronises), so
    the host waits at most until the GPU reaches the step that made the flag."""

    def __init__(self, flag: torch.Tensor):
        self.device_flag = flag
        if flag.device.type == "cuda":
            self.host = torch.empty((), dtype=torch.bool, pin_memory=True)
            self.host.copy_(flag, non_blocking=True)
            self.event: torch.cuda.Event | None = torch.cuda.Event()
            self.event.record()
        else:
            self.host, self.event = flag, None

    def value(self) -> bool:
        if self.event is not None:
            while not self.event.query():
                time.sleep(5e-5)
        return bool(self.host)


@dataclass
class PendingStep:
    """A step whose verdict the host has not read yet: its iteration, the flag, what the
    trainer needs to describe a fault (its averaged scalars and its per-task outputs, detached)
    and the sampler and RNG state from before it (to stop with)."""

    iteration: int
    finite: FiniteFlag
    scalars: dict[str, Any]
    out: dict[str, Any]
    before: dict[str, Any]
