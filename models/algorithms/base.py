"""``GBML``: one gradient-based meta-learner whose presets are MAML, FOMAML, ANIL, BOIL.

Variants differ in a few small hooks, not in copies of the loop:

- :meth:`GBML.adapted_names` — which parameters adapt in the inner loop (the set ``A``);
- :meth:`GBML.inner_update` — the inner step ``θᵏ⁺¹ = θᵏ − α ⊙ gᵏ``;
- ``first_order`` — whether the inner gradients ``gᵏ`` are detached (FOMAML).

``forward(task_batch)`` returns a dict: ``loss`` (what the meta-optimizer minimises), its
terms, and metrics (``acc``, ``acc_init``), plus ``task_acc`` (per-task accuracies, for
evaluation). In ``train()`` mode the inner loop takes ``inner_steps`` steps, in ``eval()``
mode ``inner_steps_test``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datasets.task_batch import TaskBatch
from engine.errors import ConfigError
from engine.inner_loop import ENGINES, Params, adapt, logits_at, map_tasks


class GBML(nn.Module):
    """Gradient-based meta-learning over a network ``model`` (images → logits).

    Args:
        model: the network f(x|θ); its parameters are the meta-parameters θ⁰.
        inner_lr: the inner learning rate α (scalar).
        inner_steps: inner steps S during meta-training.
        inner_steps_test: inner steps at evaluation (defaults to ``inner_steps``).
        engine: ``"vmap"`` (tasks batched with ``torch.func.vmap``), ``"loop"`` (one task at a
            time) or ``"auto"`` (vmap on GPU, loop on CPU, where it measured faster).
        first_order: detach the inner gradients (FOMAML).
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.5,
        inner_steps: int = 3,
        inner_steps_test: int | None = None,
        engine: str = "auto",
        first_order: bool = False,
    ):
        super().__init__()
        if engine not in (*ENGINES, "auto"):
            raise ConfigError(f"algorithm.engine: expected one of vmap, loop, auto; got '{engine}'")
        if inner_steps < 0 or (inner_steps_test is not None and inner_steps_test < 0):
            raise ConfigError("algorithm.inner_steps / inner_steps_test: must be >= 0")
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.inner_steps_test = int(inner_steps if inner_steps_test is None else inner_steps_test)
        self.engine = engine
        self.first_order = bool(first_order)

    # ---- hooks a variant overrides -------------------------------------------------------
    def adapted_names(self) -> list[str]:
        """Names of the parameters adapted in the inner loop (MAML: all of them)."""
        return [name for name, _ in self.model.named_parameters()]

    def inner_update(self, params: Params, grads: Params, step: int) -> Params:
        """One inner step ``θᵏ⁺¹ = θᵏ − α gᵏ`` (override for per-tensor or learned rates)."""
        return {name: p - self.inner_lr * grads[name] for name, p in params.items()}

    # ---- the meta-training step ----------------------------------------------------------
    @property
    def way(self) -> int:
        return self.model.head.out_features

    def resolved_engine(self, device: torch.device) -> str:
        if self.engine != "auto":
            return self.engine
        return "vmap" if device.type == "cuda" else "loop"

    def split_parameters(self) -> tuple[Params, Params]:
        """θ⁰ split into (adapted, held fixed in the inner loop); buffers go with the fixed part."""
        names = set(self.adapted_names())
        adapted, frozen = {}, dict(self.model.named_buffers())
        for name, p in self.model.named_parameters():
            (adapted if name in names else frozen)[name] = p
        unknown = names - adapted.keys()
        if unknown:
            raise ValueError(f"adapted_names(): not parameters of the model: {sorted(unknown)}")
        return adapted, frozen

    def task_forward(self, adapted: Params, frozen: Params, support_x, support_y, query_x):
        """One task: adapt on the support set, return query logits after and before adaptation."""
        steps = self.inner_steps if self.training else self.inner_steps_test
        final = adapt(self.model, adapted, frozen, support_x, support_y, steps, self.inner_update, self.first_order)
        logits = logits_at(self.model, final, frozen, query_x)
        with torch.no_grad():
            logits_init = logits_at(self.model, adapted, frozen, query_x)
        return logits, logits_init

    def forward(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        batch = TaskBatch(*batch).validate(way=self.way)
        support_way = int(batch.support_y.max()) + 1
        if support_way != self.way:
            raise ValueError(
                f"TaskBatch.support_y: tasks are {support_way}-way but the model's head has "
                f"{self.way} outputs (set data.way to match)"
            )
        adapted, frozen = self.split_parameters()
        engine = self.resolved_engine(batch.support_x.device)
        logits, logits_init = map_tasks(
            self.task_forward, (adapted, frozen), (batch.support_x, batch.support_y, batch.query_x), engine
        )
        query_y = batch.query_y
        loss_ce = F.cross_entropy(logits.flatten(0, 1), query_y.flatten())
        task_acc = (logits.argmax(-1) == query_y).float().mean(1).detach()
        acc_init = (logits_init.argmax(-1) == query_y).float().mean()
        return {
            "loss": loss_ce,
            "loss_ce": loss_ce.detach(),
            "acc": task_acc.mean(),
            "acc_init": acc_init,
            "task_acc": task_acc,
        }
