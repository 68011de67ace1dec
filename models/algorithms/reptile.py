"""Reptile (Nichol, Achiam and Schulman, 2018) as a GBML: first-order inner steps, and the
meta-update direction θ⁰ − θˢ through the ordinary outer optimizer (:class:`~losses.reptile.ReptileLoss`).

In training each task's S inner SGD steps run on its support and query sets together (the
paper's "train on the task"), or on the support set alone (``support_only``); evaluation is the
usual protocol: the inner loop on the support set, accuracy on the query set.
"""

from __future__ import annotations

import torch
from torch import nn

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import ALGORITHMS
from lil_meta.losses.reptile import ReptileLoss
from lil_meta.models.algorithms.base import GBML


@ALGORITHMS.register("reptile", first_order=True)
class Reptile(GBML):
    """GBML with ``first_order`` and the Reptile term as its only outer loss.

    Args:
        model: the network θ.
        support_only: adapt on the support set alone in training (default: support and query).
        **kwargs: :class:`GBML` arguments (``inner_lr`` α and ``inner_steps`` S set the term's
            scale α·S; the config's ``losses`` are not used).
    """

    def __init__(self, model: nn.Module, support_only: bool = False, **kwargs):
        if kwargs.get("first_order") is False:
            raise ConfigError("algorithm.first_order: Reptile is first order by definition; leave it true")
        super().__init__(model, **{**kwargs, "first_order": True, "losses": None})
        if self.rates.learn:
            raise ConfigError("algorithm.rates.learn: Reptile's update does not differentiate the inner "
                              "rates; use fixed rates")
        self.support_only = bool(support_only)
        self.losses = nn.ModuleList([ReptileLoss(scale=self.inner_lr * max(1, self.inner_steps))])

    def forward(self, batch: TaskBatch, step: int = 0) -> dict[str, torch.Tensor]:
        """In training (unless ``support_only``) the inner loop runs on support and query together;
        the query accuracy reported is then on images the loop saw."""
        if self.training and not self.support_only:
            batch = TaskBatch.trusted(torch.cat([batch.support_x, batch.query_x], 1),
                                      torch.cat([batch.support_y, batch.query_y], 1), batch.query_x, batch.query_y,
                                      way=batch.way)
        return super().forward(batch, step)
