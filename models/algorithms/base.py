"""``GBML``: one gradient-based meta-learner; MAML and FOMAML are presets of it.

Variants differ in a few small hooks, not in copies of the loop:

- :meth:`GBML.adapted_names` — which parameters adapt in the inner loop (the set ``A``);
- :meth:`GBML.inner_update` — the inner step ``θᵏ⁺¹ = θᵏ − α ⊙ gᵏ``;
- :meth:`GBML.inner_loss` — the support objective (cross-entropy);
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
from losses import OuterInputs, OuterLoss
from losses.cross_entropy import CrossEntropy


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
        losses: the outer-loss terms (default: cross-entropy alone); see :mod:`losses`.
        metrics_period: compute the diagnostics that cost extra work — AC (eq. 4), which needs
            one more support gradient at θˢ, and ``acc_init``, one more query forward at θ⁰ —
            on every ``metrics_period``-th training forward (the logging steps; 0: never).
            In ``eval()`` mode ``acc_init`` is always computed and AC never.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.5,
        inner_steps: int = 3,
        inner_steps_test: int | None = None,
        engine: str = "auto",
        first_order: bool = False,
        losses: list[OuterLoss] | None = None,
        metrics_period: int = 20,
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
        self.losses = nn.ModuleList(losses if losses is not None else [CrossEntropy()])
        self.metrics_period = int(metrics_period)
        self._forwards = 0

    # ---- hooks a variant overrides -------------------------------------------------------
    def adapted_names(self) -> list[str]:
        """Names of the parameters adapted in the inner loop (MAML: all of them)."""
        return [name for name, _ in self.model.named_parameters()]

    def inner_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The support-set objective the inner loop descends: ``CE(f(xs|θ), ys)``."""
        return F.cross_entropy(logits, labels)

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

    def task_forward(
        self, adapted: Params, frozen: Params, support_x, support_y, query_x, final_grad: bool, init_logits: bool
    ):
        """One task: adapt on the support set; return query logits and the trajectory record.

        When a loss term asks for it, also the logits at the straight step
        θ̂ = θ⁰ − T · g⁰/‖g⁰‖ (DESIGN.md §1, paper eq. 7–8).
        """
        steps = self.inner_steps if self.training else self.inner_steps_test
        final, record = adapt(
            self.model, adapted, frozen, support_x, support_y, steps, self.inner_update, self.first_order,
            final_grad, self.inner_loss,
        )
        out = {"logits": logits_at(self.model, final, frozen, query_x), **record}
        g0 = out.pop("g0", None)
        if init_logits:
            with torch.no_grad():
                out["logits_init"] = logits_at(self.model, adapted, frozen, query_x)
        if any(term.needs_straight_step for term in self.losses):
            if g0 is None:
                out["straight_logits"] = out["logits"]
            else:
                scale = record["step_norms"].sum() / record["grad_norms"][0].clamp_min(1e-12)
                straight = {name: p - scale * g0[name] for name, p in adapted.items()}
                out["straight_logits"] = logits_at(self.model, straight, frozen, query_x)
        return out

    def forward(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        batch = TaskBatch(*batch).validate(way=self.way)
        support_way = int(batch.support_y.max()) + 1
        if support_way != self.way:
            raise ValueError(
                f"TaskBatch.support_y: tasks are {support_way}-way but the model's head has "
                f"{self.way} outputs (set data.way to match)"
            )
        logging_step = self.metrics_period > 0 and self._forwards % self.metrics_period == 0
        final_grad = self.training and logging_step
        init_logits = not self.training or logging_step
        if self.training:
            self._forwards += 1
        adapted, frozen = self.split_parameters()

        def task_fn(adapted, frozen, sx, sy, qx):
            return self.task_forward(adapted, frozen, sx, sy, qx, final_grad, init_logits)

        per_task = map_tasks(
            task_fn, (adapted, frozen), (batch.support_x, batch.support_y, batch.query_x),
            self.resolved_engine(batch.support_x.device),
        )
        return self.outer_terms(per_task, batch.query_y)

    def outer_terms(self, per_task: dict[str, torch.Tensor], query_y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output dict: weighted loss terms, their sum ``loss``, and metrics (no graph)."""
        logits = per_task["logits"]
        step_norms = per_task.get("step_norms")
        traj_len = step_norms.sum(-1) if step_norms is not None else logits.new_zeros(logits.shape[0])
        inputs = OuterInputs(logits, query_y, traj_len, per_task.get("straight_logits"))
        out: dict[str, torch.Tensor] = {}
        total = 0.0
        for term in self.losses:
            value = term(inputs)
            weighted = term.weight * value
            total = total + weighted
            out[f"loss_{term.key}"] = weighted.detach()
            if term.metric:
                out[term.metric] = value.detach()
        out["loss"] = total
        task_acc = (logits.argmax(-1) == query_y).float().mean(1).detach()
        out["acc"] = task_acc.mean()
        if "logits_init" in per_task:
            out["acc_init"] = (per_task["logits_init"].argmax(-1) == query_y).float().mean()
        out["task_acc"] = task_acc
        out.update(linearity_metrics(per_task))
        return out


def linearity_metrics(per_task: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PC (eq. 3) and, when ‖gˢ‖ was taken, AC (eq. 4): per task, then the mean; no graph."""
    if "step_norms" not in per_task:
        return {}
    with torch.no_grad():
        step_norms, grad_norms = per_task["step_norms"], per_task["grad_norms"]
        traj_len = step_norms.sum(-1)
        metrics = {
            "traj_len": traj_len.mean(),
            "pc": (traj_len / per_task["disp_norm"].clamp_min(1e-12)).mean(),
        }
        steps = step_norms.shape[-1]
        if grad_norms.shape[-1] == steps + 1:
            g0 = grad_norms[..., :1].clamp_min(1e-12)
            metrics["ac"] = (grad_norms[..., 1:] / g0).mean(-1).mean()
        return metrics
