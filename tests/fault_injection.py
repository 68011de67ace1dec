"""A registered variant that makes one process's loss NaN at chosen training steps, for the
multi-process fault tests (``extra_modules: [fault_injection]``, ``tests/`` on the path)."""

from __future__ import annotations

import os

from lil_meta.engine.registry import ALGORITHMS
from lil_meta.models.algorithms.base import GBML


@ALGORITHMS.register("nan_on_rank")
class NaNOnRank(GBML):
    """MAML whose loss is NaN on process ``bad_rank`` (``RANK``) at the steps ``bad_steps``."""

    def __init__(self, model, bad_rank: int = 1, bad_steps: list[int] | None = None, **kwargs):
        super().__init__(model, **kwargs)
        self.bad_rank, self.bad_steps = int(bad_rank), {int(s) for s in bad_steps or []}

    def forward(self, batch, step: int = 0):
        out = super().forward(batch, step)
        if self.training and step in self.bad_steps and int(os.environ.get("RANK", "0")) == self.bad_rank:
            out["loss"] = out["loss"] * float("nan")
        return out
