"""``EventStorage``: the scalar metrics of a run, by name and iteration, read by the writers."""

from __future__ import annotations

from collections import defaultdict, deque

import torch

__all__ = ["EventStorage"]


class EventStorage:
    """Scalar metrics by name, each a bounded history of ``(iteration, value)`` pairs.

    Hooks put values at ``storage.iter`` (the current iteration, 0-based); writers read the
    mean over a window of iterations. A value may be a 0-dim tensor: it is kept as it is (no
    device synchronisation) until a reader asks, then all pending values are read in one
    transfer per device and stored as Python floats (also once ``max_pending`` of them wait).

    ``put_scalars(valid=flag, ...)``: the values count only if the 0-dim boolean tensor ``flag``
    is true, which is read with them (a training step whose finiteness is known on the device
    only, :class:`engine.trainer.MetaTrainer`): a step found non-finite leaves no entry, and no
    one waits for the flag before a reader asks.
    """

    def __init__(self, start_iter: int = 0, max_history: int = 20_000, max_pending: int = 4096) -> None:
        self.iter = start_iter
        self._history: dict[str, deque] = defaultdict(lambda: deque(maxlen=max_history))
        self._pending: list[tuple[str, int, float | torch.Tensor, torch.Tensor | None]] = []
        self.max_pending = int(max_pending)

    def put_scalar(self, name: str, value: float | torch.Tensor, valid: torch.Tensor | None = None) -> None:
        if isinstance(value, torch.Tensor) or valid is not None:
            value = value.detach() if isinstance(value, torch.Tensor) else float(value)
            self._pending.append((name, self.iter, value, None if valid is None else valid.detach()))
            if len(self._pending) >= self.max_pending:
                self._materialize()
        else:
            self._history[name].append((self.iter, float(value)))

    def put_scalars(self, valid: torch.Tensor | None = None, **scalars: float | torch.Tensor) -> None:
        for name, value in scalars.items():
            self.put_scalar(name, value, valid)

    def _materialize(self) -> None:
        """Move the pending values into the history, each device's tensors (values and validity
        flags) read in one transfer."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        tensors: list[torch.Tensor] = []
        for _, _, value, valid in pending:
            tensors += [t for t in (value, valid) if isinstance(t, torch.Tensor)]
        read = _read_all(tensors)
        for name, it, value, valid in pending:
            if valid is None or read[id(valid)]:
                self._history[name].append((it, read[id(value)] if isinstance(value, torch.Tensor) else value))

    def history(self, name: str) -> list[tuple[int, float]]:
        self._materialize()
        return sorted(self._history.get(name, ()), key=lambda entry: entry[0])

    def latest(self) -> dict[str, tuple[int, float]]:
        """The last ``(iteration, value)`` of every metric."""
        self._materialize()
        return {name: max(values, key=lambda entry: entry[0]) for name, values in self._history.items() if values}

    def window_means(self, first_iter: int) -> dict[str, float]:
        """Mean of each metric over the entries put at iterations ``>= first_iter``."""
        self._materialize()
        means = {}
        for name, values in self._history.items():
            window = [v for it, v in values if it >= first_iter]
            if window:
                means[name] = sum(window) / len(window)
        return means


def _read_all(tensors: list[torch.Tensor]) -> dict[int, float]:
    """``{id(tensor): its value}`` for 0-dim tensors, one transfer per device."""
    by_device: dict[torch.device, dict[int, torch.Tensor]] = defaultdict(dict)
    for t in tensors:
        by_device[t.device][id(t)] = t
    values: dict[int, float] = {}
    for group in by_device.values():
        read = torch.stack([t.double() for t in group.values()]).tolist()
        values.update(zip(group, read, strict=True))
    return values
