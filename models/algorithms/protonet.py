"""Prototypical Networks (Snell, Swersky and Zemel, 2017; docs/design.md §1.1c), the metric
learner the paper (§4.3, App. D) reads a linear inner loop as.

Per task the class prototypes are the mean support embedding of ``model.features`` for each
class, and a query's logits are its negative squared Euclidean distances to them; the loss is the
query cross-entropy, and there is no inner loop. Each set goes through the body on its own, so
BatchNorm uses each set's statistics, as in the GBML algorithms. The output dict is theirs with
what has no meaning here left out: ``loss``, ``loss_ce``, ``acc``, ``task_acc`` and the
finiteness flags; no PC, AC, ``hess_ratio`` or kernel metrics (absent, not zero).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import ALGORITHMS
from lil_meta.losses import OuterLoss, task_accuracy
from lil_meta.losses.cross_entropy import CrossEntropy
from lil_meta.models.algorithms.head_features import check_network
from lil_meta.models.algorithms.metrics import describe_nonfinite


def prototype_logits(support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, way: int) -> torch.Tensor:
    """−‖query − cₙ‖² for every query embedding ``[Q, D]`` and class prototype cₙ, the mean of
    the class's support embeddings ``[K·N, D]``: ``[Q, N]``."""
    onehot = F.one_hot(support_y, way).to(support.dtype)  # [S, N]
    prototypes = (onehot.T @ support) / onehot.sum(0)[:, None]
    return -torch.cdist(query, prototypes).square()


@ALGORITHMS.register("protonet")
class ProtoNet(nn.Module):
    """Prototypical Networks over the body of ``model`` (its head is not used; module doc).

    Args:
        model: a network that keeps the contract (``features`` and an ``nn.Linear`` ``head``:
            the head gives the way).
        losses: the config's terms; only ``cross_entropy`` (the query loss of the prototypes)
            applies without an inner loop.
    """

    def __init__(self, model: nn.Module, losses: list[OuterLoss] | None = None):
        super().__init__()
        check_network(model)
        if getattr(model, "takes_step", False):
            raise ConfigError("model.backbone.per_step_bn: per-step BatchNorm weights have one row per inner step; "
                              "protonet has no inner loop (set per_step_bn=false)")
        terms = list(losses) if losses is not None else [CrossEntropy()]
        other = [t.key for t in terms if not isinstance(t, CrossEntropy)]
        if other:
            raise ConfigError(f"losses: protonet trains on the query cross-entropy of its prototypes; the terms "
                              f"{', '.join(other)} need an inner loop, which it has not")
        self.model = model
        self.weight = terms[0].weight if terms else 1.0

    @property
    def way(self) -> int:
        return self.model.head.out_features

    def begin_step(self, step: int) -> None:
        """Nothing changes once per step."""

    def auto_task_chunk(self, device: torch.device, step: int = 0) -> int:
        return 0  # the whole batch: no inner loop's graph to keep small

    def forward(self, batch: TaskBatch, step: int = 0) -> dict[str, torch.Tensor]:
        if not isinstance(batch, TaskBatch):
            batch = TaskBatch(*batch)
        if batch.way != self.way:
            raise ValueError(f"TaskBatch.support_y: tasks are {batch.way}-way but the model's head has "
                             f"{self.way} outputs (set data.way to match)")
        body = self.model.features
        logits = torch.stack([
            prototype_logits(body(sx).flatten(1), sy, body(qx).flatten(1), self.way)
            for sx, sy, qx in zip(batch.support_x, batch.support_y, batch.query_x, strict=True)])
        value = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        out = {"loss": self.weight * value, "loss_ce": (self.weight * value).detach(),
               "task_acc": task_accuracy(logits, batch.query_y)}
        out["acc"] = out["task_acc"].mean()
        out["task_logits_finite"] = torch.isfinite(logits.detach()).flatten(1).all(1)
        return out

    def diagnose(self, out: dict[str, torch.Tensor], rank: int = 0) -> str | None:
        return describe_nonfinite(out, rank=rank)
