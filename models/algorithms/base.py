"""``GBML``: one gradient-based meta-learner; MAML, FOMAML, ANIL and BOIL are presets of it.

Variants differ in a few small hooks, not in copies of the loop (see ``docs/new_variant.md``):

(a) :meth:`GBML.adapted_names` — which parameters adapt in the inner loop (the set ``A``).
    The ``adapt`` argument covers the usual cases: ``"all"`` (MAML, FOMAML), ``"head"`` (ANIL:
    ``model.head`` only), ``"body"`` (BOIL: everything but the head, which is learned in the
    outer loop only). Everything outside ``A`` is held fixed in the inner loop, and the
    trajectory record (step norms, g⁰, the straight step) is over ``A`` alone.
(b) :meth:`GBML.inner_update` — the inner step ``θᵏ⁺¹ = θᵏ − α ⊙ gᵏ``. α is a scalar, one rate
    per adapted tensor or one per element, fixed or meta-learned (Meta-SGD): ``rates``
    (:class:`~models.algorithms.settings.Rates`, :class:`~models.algorithms.inner_lr.InnerLR`).
    :meth:`GBML.inner_loss` is the support objective the step descends (cross-entropy).
(c) outer-loss terms — the ``losses`` list of registered :class:`~losses.base.OuterLoss`
    modules (config ``losses:``). A term sees each task after its inner loop and can ask the
    engine for more (the straight step, another trajectory): the one way to add a term.

``first_order`` detaches the inner gradients ``gᵏ`` (FOMAML). How the loop runs is
``execution`` and what it measures ``diagnostics`` (:mod:`models.algorithms.settings`).

``forward(task_batch, step=0)`` returns a dict: ``loss`` (what the meta-optimizer minimises), its
weighted terms, and metrics (``acc``, ``acc_init``, PC, AC, ``hess_ratio``), plus ``task_acc``
and ``task_acc_init`` (per-task accuracies after adaptation and at θ⁰ without it, for
evaluation). ``step`` is the training step's index (the trainer's iteration), which sets the
schedule of the costly diagnostics (``diagnostics.metrics_period``); the forward has no hidden
state. :meth:`GBML.begin_step` is the once-per-step call, before the step's forward passes. In
``train()`` mode the inner loop takes ``inner_steps`` steps, in ``eval()`` mode
``inner_steps_test``.

The network contract (checked when the algorithm is built, :func:`~models.algorithms.head_features.check_network`):
``model(x) == model.head(model.features(x))`` with ``model.head`` an ``nn.Linear``. When exactly
the head adapts (ANIL) the inner loop runs on the head over features computed once per task
(:mod:`models.algorithms.head_features`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.adapted_task import AdaptedTask
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.inner_loop import InnerLoop, Params, adapt, logits_at, map_tasks, query_step
from lil_meta.losses import OuterInputs, OuterLoss, task_accuracy
from lil_meta.losses.cross_entropy import CrossEntropy
from lil_meta.models.algorithms.head_features import check_network, head_only, head_task_network
from lil_meta.models.algorithms.inner_lr import InnerLR
from lil_meta.models.algorithms.metrics import (
    NONFINITE_FLAGS,
    TaskOutputs,
    describe_nonfinite,
    diagnostic_logits,
    kernel_metrics,
    linearity_metrics,
)
from lil_meta.models.algorithms.settings import (
    Diagnostics,
    Execution,
    ExecutionPolicy,
    Rates,
    as_group,
)
from lil_meta.models.backbones.layers import for_vmapped_tasks, nhwc_per_task, per_step_parameters
from lil_meta.models.backbones.task_conv import TaskConv2d

ADAPT = ("all", "head", "body")


class GBML(nn.Module):
    """Gradient-based meta-learning over a network ``model`` (images → logits).

    Args:
        model: the network f(x|θ); its parameters are the meta-parameters θ⁰.
        inner_lr: the inner learning rate α (the initial value when learned).
        inner_steps: inner steps S during meta-training.
        inner_steps_test: inner steps at evaluation (defaults to ``inner_steps``).
        first_order: detach the inner gradients (FOMAML).
        losses: the outer-loss terms (default: cross-entropy alone); see :mod:`losses`.
        adapt: which parameters the default :meth:`adapted_names` adapts: ``"all"``,
            ``"head"`` (ANIL) or ``"body"`` (BOIL).
        rates: the inner rates' shape and whether they are learned (:class:`Rates`).
        execution: engine, channels-last images, inner-step checkpointing, precomputed
            features (:class:`Execution`); none of it changes the arithmetic.
        diagnostics: the logging steps' period and which costly metrics they compute
            (:class:`Diagnostics`). In ``eval()`` mode ``acc_init`` (and the kernel metrics)
            are always computed, AC never.

    Each group is the frozen value or a mapping of its keys (a config node). :meth:`adapted_names`
    is called once at the end of ``__init__`` to size the rates; a subclass's override may rely on
    the model and the constructor's arguments only.
    """

    def __init__(self, model: nn.Module, *, inner_lr: float = 0.5, inner_steps: int = 3,
                 inner_steps_test: int | None = None, first_order: bool = False,
                 losses: list[OuterLoss] | None = None, adapt: str = "all", rates: Rates | dict | None = None,
                 execution: Execution | dict | None = None, diagnostics: Diagnostics | dict | None = None):
        super().__init__()
        if inner_steps < 0 or (inner_steps_test is not None and inner_steps_test < 0):
            raise ConfigError("algorithm.inner_steps / inner_steps_test: must be >= 0")
        if adapt not in ADAPT:
            raise ConfigError(f"algorithm.adapt: expected one of {', '.join(ADAPT)}; got '{adapt}'")
        check_network(model)
        self.model = model
        self.inner_steps = int(inner_steps)
        self.inner_steps_test = int(inner_steps if inner_steps_test is None else inner_steps_test)
        self.first_order = bool(first_order)
        self.losses = nn.ModuleList(losses if losses is not None else [CrossEntropy()])
        self.adapt = adapt
        self.rates = as_group(Rates, rates, "algorithm.rates")
        self.execution = as_group(Execution, execution, "algorithm.execution")
        self.diagnostics = as_group(Diagnostics, diagnostics, "algorithm.diagnostics")
        adapted, _ = self.split_parameters()
        if not adapted:
            raise ConfigError(f"algorithm: no parameter adapts in the inner loop (adapt={adapt})")
        steps, walker = self._longest_trajectory()
        self._check_per_step_network(adapted, steps, walker)
        if self.rates.per_step and steps > self.inner_steps:
            raise ConfigError(f"algorithm.rates.per_step: per-step inner rates exist for the {self.inner_steps} "
                              f"training steps only, but {walker} takes {steps} steps")
        self.inner_lrs = InnerLR(inner_lr, adapted, self.rates.mode, self.rates.learn,
                                 steps=self.inner_steps if self.rates.per_step else None)
        self._vmap_networks: dict[int, nn.Module] = {}  # model id -> its copy for the vmap engine
        self._policies: dict[str, ExecutionPolicy] = {}  # device -> the execution resolved there

    def _check_per_step_network(self, adapted: Params, steps: int, walker: str) -> None:
        """Per-step BatchNorm weights (BNWB) are held fixed in the inner loop and have a row for
        each of the ``steps`` of the longest trajectory (``walker`` walks it)."""
        names, rows = per_step_parameters(self.model)
        if not names:
            return
        if names & adapted.keys():
            raise ConfigError(f"algorithm: per-step BatchNorm weights are learned in the outer loop only; "
                              f"adapted_names() lists {sorted(names & adapted.keys())}")
        if steps > rows:
            raise ConfigError(f"model.backbone.bn_steps: per-step BatchNorm weights have {rows} rows, but the inner "
                              f"loop takes {steps} steps in {walker}")

    def _longest_trajectory(self) -> tuple[int, str]:
        """The most inner steps any trajectory walks — training, evaluation, or one a loss term
        retraces (:meth:`~losses.base.OuterLoss.steps_walked`) — and what sets that number."""
        walks = [(self.inner_steps, "training (algorithm.inner_steps)"),
                 (self.inner_steps_test, "evaluation (algorithm.inner_steps_test)")]
        walks += [(term.steps_walked(self.inner_steps), f"the {term.key} term's retraced trajectory (losses)")
                  for term in self.losses]
        return max(walks, key=lambda walk: walk[0])

    @property
    def inner_lr(self) -> float:
        """α for ``scalar`` fixed rates; the initial value of the others."""
        return self.inner_lrs.init

    @inner_lr.setter
    def inner_lr(self, value: float) -> None:
        self.inner_lrs.init = float(value)

    # ---- hooks a variant overrides -------------------------------------------------------
    def adapted_names(self) -> list[str]:
        """(a) Names of the parameters adapted in the inner loop: all of them (MAML), only
        ``head.*`` (ANIL) or all but ``head.*`` (BOIL), after ``adapt``; never per-step
        BatchNorm weights (MAML++'s BNWB), which the outer loop alone learns."""
        per_step, _ = per_step_parameters(self.model)  # MAML++'s BNWB: outer-learned only
        names = [name for name, _ in self.model.named_parameters() if name not in per_step]
        if self.adapt == "all":
            return names
        return [n for n in names if n.startswith("head.") == (self.adapt == "head")]

    def inner_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The support-set objective the inner loop descends: ``CE(f(xs|θ), ys)``."""
        return F.cross_entropy(logits, labels)

    def inner_update(self, params: Params, grads: Params, step: int, lr_scale: float = 1.0) -> Params:
        """(b) One inner step ``θᵏ⁺¹ = θᵏ − αₖ ⊙ gᵏ``, αₖ from ``self.inner_lrs`` (by name and step),
        every rate times ``lr_scale`` (a term's rescaled trajectory, :meth:`AdaptedTask.retrace`)."""
        lrs = self.inner_lrs
        if lr_scale == 1.0:
            return {name: p - lrs.at(name, step) * grads[name] for name, p in params.items()}
        return {name: p - (lrs.at(name, step) * lr_scale) * grads[name] for name, p in params.items()}

    def inner_steps_now(self) -> int:
        """S for this forward: ``inner_steps`` in training, ``inner_steps_test`` in eval mode."""
        return self.inner_steps if self.training else self.inner_steps_test

    def first_order_at(self, step: int) -> bool:
        """Whether training step ``step`` detaches the inner gradients (``first_order``; MAML++'s
        schedule overrides it, :class:`~models.algorithms.mamlpp.MAMLPlusPlus`)."""
        return self.first_order

    def head_only(self, adapted: Params) -> bool:
        """Whether the inner loop runs on the head over precomputed features (ANIL)."""
        return head_only(self.model, adapted, self.execution.precompute_features)

    # ---- the meta-training step ----------------------------------------------------------
    @property
    def way(self) -> int:
        return self.model.head.out_features

    def policy(self, device: torch.device) -> ExecutionPolicy:
        """:attr:`execution` resolved for ``device``, once (the network is fixed once it has run).

        ``engine: auto``: vmap on CUDA, the per-task loop on CPU (where each measured faster) or
        wherever inner steps are checkpointed. ``task_chunk``: 1 on the loop, where each task's
        forward and backward then runs on its own (one task's graph alive; the same update up to
        rounding), 0 under vmap (the trainer shrinks it only if it does not fit).
        ``channels_last: auto``: none off the CPU until a GPU measurement says otherwise; on
        the CPU the query set (oneDNN's convolutions and pooling are faster in NHWC), and the
        support set too unless a double backward runs through a convolution that is not a
        :class:`TaskConv2d` on the per-task loop (PyTorch's own double backward of a convolution,
        which vmap runs, is slower in NHWC, :class:`TaskConv2d`'s faster)."""
        key = str(device)
        if key not in self._policies:
            device = torch.device(device)
            ex = self.execution
            engine = ex.engine if ex.engine != "auto" else (
                "vmap" if device.type == "cuda" and not ex.checkpoint_inner_steps else "loop")
            layout = ex.channels_last
            if layout == "auto":
                no_double_backward = self.first_order or self.head_only(self.split_parameters()[0])
                own_convs = engine == "loop" and all(  # under vmap the convolutions are PyTorch's
                    isinstance(m, TaskConv2d) for m in self.model.modules() if isinstance(m, nn.Conv2d))
                layout = "none" if device.type != "cpu" else ("all" if no_double_backward or own_convs else "query")
            self._policies[key] = ExecutionPolicy(engine, layout, 1 if engine == "loop" else 0)
        return self._policies[key]

    def auto_task_chunk(self, device: torch.device, step: int = 0) -> int:
        """What ``solver.task_chunk: auto`` means for this algorithm (:meth:`policy`)."""
        return self.policy(device).task_chunk

    def prepared(self, batch: TaskBatch) -> TaskBatch:
        """The batch, checked against the head (a :class:`TaskBatch` is checked when it is
        made, so this reads no tensor), its images in the layout of :meth:`policy`."""
        if not isinstance(batch, TaskBatch):
            batch = TaskBatch(*batch)
        if batch.way != self.way:
            raise ValueError(f"TaskBatch.support_y: tasks are {batch.way}-way but the model's head has "
                             f"{self.way} outputs (set data.way to match)")
        layout = self.policy(batch.query_x.device).channels_last
        if layout == "none":
            return batch
        support_x = nhwc_per_task(batch.support_x) if layout == "all" else batch.support_x
        return TaskBatch.trusted(support_x, batch.support_y, nhwc_per_task(batch.query_x), batch.query_y,
                                 way=batch.way)

    def split_parameters(self, network: nn.Module | None = None) -> tuple[Params, Params]:
        """θ⁰ split into (adapted, held fixed in the inner loop); buffers go with the fixed part.
        ``network``: a copy of ``model`` with the same names (e.g. LIL pretraining's teacher)."""
        network = self.model if network is None else network
        names = set(self.adapted_names())
        adapted, frozen = {}, dict(network.named_buffers())
        for name, p in network.named_parameters():
            (adapted if name in names else frozen)[name] = p
        unknown = names - adapted.keys()
        if unknown:
            raise ValueError(f"adapted_names(): not parameters of the model: {sorted(unknown)}")
        return adapted, frozen

    def network(self, vmapped: bool) -> nn.Module:
        """The network the per-task function evaluates: ``model``, or for the vmap engine its
        parameter-free copy built for vmap (:func:`~models.backbones.layers.for_vmapped_tasks`)."""
        if not vmapped:
            return self.model
        key = id(self.model)
        if key not in self._vmap_networks:
            self._vmap_networks = {key: for_vmapped_tasks(self.model)}
        return self._vmap_networks[key]

    def inner_loop(self, vmapped: bool, first_order: bool | None = None) -> InnerLoop:
        """The :class:`~engine.inner_loop.InnerLoop` every task of this forward runs."""
        first_order = self.first_order if first_order is None else first_order
        return InnerLoop(self.inner_update, self.inner_loss, first_order, self.execution.checkpoint_inner_steps,
                         vmapped)

    def task_forward(self, adapted: Params, frozen: Params, support_x, support_y, query_x, *,
                     diagnostics: bool, vmapped: bool, first_order: bool | None = None) -> TaskOutputs:
        """One task: adapt on the support set (:func:`~engine.inner_loop.adapt`), then what the
        outputs and the loss terms need (:class:`~models.algorithms.metrics.TaskOutputs`): the
        query logits at θˢ, the trajectory, on logging steps and in eval mode the diagnostics'
        logits (:func:`~models.algorithms.metrics.diagnostic_logits`), and each asking term's
        ``per_task`` tensors under its key. ``diagnostics`` (logging steps): also gˢ for AC and
        the Hessian ratios hₖ of eq. 5.

        The diagnostics carry no graph and run before the query pass that builds one; where the
        inner loop keeps a graph (second order, in training) they come from a trajectory without
        graph run first (S more support passes), so their temporaries never add to the graph's.
        """
        net = self.network(vmapped)
        if self.head_only(adapted):
            net, frozen, support_x, query_x = head_task_network(net, frozen, support_x, query_x)
        steps, inner = self.inner_steps_now(), self.inner_loop(vmapped, first_order)
        run = lambda **diag: adapt(net, adapted, frozen, support_x, support_y, steps=steps, inner=inner,  # noqa: E731
                                   **diag)
        diag = {"final_grad": diagnostics, "hessian_ratios": diagnostics and self.diagnostics.hessian_ratio}
        logged = lambda theta_s: diagnostic_logits(  # noqa: E731
            net, adapted, theta_s, frozen, query_x, vmapped=vmapped,
            linearized=self.diagnostics.linearized_metrics and steps > 0, step=query_step(steps))
        init = (None, None, None)
        if diagnostics and steps > 0 and not inner.first_order and torch.is_grad_enabled():
            with torch.no_grad():
                probe = run(**diag)
            init = logged(probe.params)
            adaptation = run()
            adaptation = adaptation._replace(trajectory=adaptation.trajectory._replace(
                final_grad_norm=probe.trajectory.final_grad_norm, hess_ratios=probe.trajectory.hess_ratios))
        else:
            adaptation = run(**diag)
            if diagnostics or not self.training:
                init = logged(adaptation.params)
        logits = logits_at(net, adaptation.params, frozen, query_x, vmapped=vmapped, step=query_step(steps))
        task = AdaptedTask(model=net, frozen=frozen, support_x=support_x, support_y=support_y, query_x=query_x,
                           theta0=adapted, adaptation=adaptation, logits=logits, inner=inner)
        extras = {term.key: term.per_task(task) for term in self.losses if term.asks_per_task}
        return TaskOutputs(logits, adaptation.trajectory, extras, *init)

    def begin_step(self, step: int) -> None:
        """Once per training step, before its forward passes: each term's ``begin_step``."""
        for term in self.losses:
            term.begin_step(step)

    def forward(self, batch: TaskBatch, step: int = 0) -> dict[str, torch.Tensor]:
        """The outer loss and metrics of a meta-batch (or of a chunk of one) at training step
        ``step`` (module doc): on a logging step (``step % metrics_period == 0``, so also a
        direct call's default), the diagnostics too."""
        batch = self.prepared(batch)
        period = self.diagnostics.metrics_period
        diagnostics = self.training and period > 0 and step % period == 0
        first_order = self.first_order_at(step) if self.training else self.first_order
        adapted, frozen = self.split_parameters()

        def task_fn(adapted, frozen, sx, sy, qx, *, vmapped):
            return self.task_forward(adapted, frozen, sx, sy, qx, diagnostics=diagnostics, vmapped=vmapped,
                                     first_order=first_order)

        per_task = map_tasks(task_fn, (adapted, frozen), (batch.support_x, batch.support_y, batch.query_x),
                             self.policy(batch.support_x.device).engine)
        return self.outputs(per_task, batch.query_y)

    def outputs(self, per_task: TaskOutputs, query_y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output dict: each term's weighted value ``loss_<key>`` and metrics, their sum
        ``loss``, the accuracies, the per-task finiteness flags and the linearity metrics."""
        logits, trajectory = per_task.logits, per_task.trajectory
        out: dict[str, torch.Tensor] = {}
        total = 0.0
        for term in self.losses:
            inputs = OuterInputs(logits, query_y, trajectory, per_task.extras.get(term.key, {}))
            value = term(inputs)
            weighted = term.weight * value
            total = total + weighted
            out[f"loss_{term.key}"] = weighted.detach()
            if term.metric:
                out[term.metric] = value.detach()
            out.update({k: v.detach() for k, v in term.report(inputs).items()})
        out["loss"] = total
        out["task_acc"] = task_accuracy(logits, query_y)
        out["acc"] = out["task_acc"].mean()
        # where a NaN/inf came from, per task (read by diagnose() only when the loss is not finite)
        out["task_logits_finite"] = torch.isfinite(logits.detach()).flatten(1).all(1)
        out["task_inner_finite"] = (torch.isfinite(trajectory.step_norms.detach()).all(-1)
                                    & torch.isfinite(trajectory.grad_norms.detach()).all(-1))
        if per_task.logits_init is not None:
            out["task_acc_init"] = task_accuracy(per_task.logits_init, query_y)
            out["acc_init"] = out["task_acc_init"].mean()
        if per_task.lin_logits is not None:
            out.update(kernel_metrics(logits, per_task.lin_init_logits, per_task.lin_logits, query_y))
        out.update(linearity_metrics(trajectory))
        return out

    def diagnose(self, out: dict[str, torch.Tensor], rank: int = 0) -> str | None:
        """Where a non-finite loss in ``out`` came from, in words (``None``: nothing to say)."""
        return describe_nonfinite(out, NONFINITE_FLAGS, rank)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        drop_step_counter(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def drop_step_counter(state_dict: dict, prefix: str) -> None:
    """Checkpoints of earlier versions count training steps in a buffer (``steps_done``, before
    that ``forwards``) that the algorithms no longer have: the trainer's iteration is the step."""
    for old in ("steps_done", "forwards"):
        state_dict.pop(prefix + old, None)
