"""The next batch, drawn while the current step runs: a one-batch lookahead over a sampler.

:class:`Prefetcher` wraps any sampler with ``next_batch()`` and ``state_dict``/``load_state_dict``
and draws the following batch on a worker thread as soon as one is handed out (the sampling is
tensor ops that release the GIL). On CUDA the batch is pinned on the worker and copied with
``non_blocking=True``, so the step never waits on the copy. The order of the batches is the
sampler's own, and :meth:`Prefetcher.state_dict` is the sampler's state *before* the batch drawn
ahead, i.e. exactly the state a sampler without lookahead would have: checkpoints, and so exact
resume, are unchanged.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

__all__ = ["Prefetcher"]


class Prefetcher:
    """``sampler``'s batches on ``device``, each drawn while the previous one is in use."""

    def __init__(self, sampler, device: torch.device | str = "cpu") -> None:
        self.sampler, self.device = sampler, torch.device(device)
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: Future | None = None  # (state before the batch, the batch)

    def _draw(self) -> tuple[dict[str, Any], Any]:
        state = self.sampler.state_dict()
        batch = self.sampler.next_batch()
        if self.device.type == "cuda" and batch.support_x.device.type == "cpu":  # not one sampled on the device
            batch = batch.pin_memory()
        return state, batch

    def _submit(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._ahead = self._pool.submit(self._draw)

    def next_batch(self):
        """The next batch on ``device``; the one after it starts drawing."""
        if self._ahead is None:
            self._submit()
        _, batch = self._ahead.result()
        self._submit()
        return batch.to(self.device, non_blocking=True)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state before the batch drawn ahead (that of a sampler without lookahead)."""
        if self._ahead is None:
            return self.sampler.state_dict()
        return self._ahead.result()[0]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._discard()
        self.sampler.load_state_dict(state)

    def _discard(self) -> None:
        """Drop the batch drawn ahead and rewind the sampler to before it."""
        if self._ahead is not None:
            state, _ = self._ahead.result()
            self._ahead = None
            self.sampler.load_state_dict(state)

    def close(self) -> None:
        """Stop drawing ahead; the worker thread ends (a later ``next_batch`` starts one again)."""
        self._discard()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
