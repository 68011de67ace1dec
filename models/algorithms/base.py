"""``GBML``: one gradient-based meta-learner; MAML, FOMAML, ANIL and BOIL are presets of it.

Variants differ in a few small hooks, not in copies of the loop (see ``docs/new_variant.md``):

(a) :meth:`GBML.adapted_names` — which parameters adapt in the inner loop (the set ``A``).
    The ``adapt`` argument covers the usual cases: ``"all"`` (MAML, FOMAML), ``"head"`` (ANIL:
    ``model.head`` only), ``"body"`` (BOIL: everything but the head, which is learned in the
    outer loop only). Everything outside ``A`` is held fixed in the inner loop, and the
    trajectory record (step norms, g⁰, the straight step) is over ``A`` alone.
(b) :meth:`GBML.inner_update` — the inner step ``θᵏ⁺¹ = θᵏ − α ⊙ gᵏ``. α is a scalar, one rate
    per adapted tensor or one per element, fixed or meta-learned (Meta-SGD):
    ``inner_lr_mode`` / ``learn_inner_lr`` (:class:`~models.algorithms.inner_lr.InnerLR`).
    :meth:`GBML.inner_loss` is the support objective the step descends (cross-entropy).
(c) outer-loss terms — the ``losses`` list of registered :class:`~losses.base.OuterLoss`
    modules (config ``losses:``). A term sees each task after its inner loop and can ask the
    engine for more (the straight step, another trajectory): the one way to add a term.

``first_order`` detaches the inner gradients ``gᵏ`` (FOMAML).

``forward(task_batch, step=0)`` returns a dict: ``loss`` (what the meta-optimizer minimises), its
weighted terms, and metrics (``acc``, ``acc_init``, PC, AC, ``hess_ratio``), plus ``task_acc``
and ``task_acc_init`` (per-task accuracies after adaptation and at θ⁰ without it, for
evaluation). ``step`` is the training step's index (the trainer's iteration), which sets the
schedule of the costly diagnostics (``metrics_period``); the forward has no hidden state.
:meth:`GBML.begin_step` is the once-per-step call, before the step's forward passes. In
``train()`` mode the inner loop takes ``inner_steps`` steps, in ``eval()`` mode
``inner_steps_test``.

The network contract: ``model(x) == model.head(model.features(x))`` with ``model.head`` an
``nn.Linear`` (Conv4 and ResNet-12 follow it). When exactly the head adapts (ANIL), the body
runs once per task on the support and once on the query set, and the inner loop adapts the
head on those features alone (``precompute_features``); the features stay differentiable with
respect to the body, so the outer loss still trains it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.inner_loop import ENGINES, AdaptedTask, Params, adapt, logits_at, map_tasks
from lil_meta.losses import OuterInputs, OuterLoss, task_accuracy
from lil_meta.losses.cross_entropy import CrossEntropy
from lil_meta.models.algorithms.inner_lr import InnerLR
from lil_meta.models.algorithms.metrics import (
    NONFINITE_FLAGS,
    describe_nonfinite,
    diagnostic_logits,
    kernel_metrics,
    linearity_metrics,
)
from lil_meta.models.backbones.layers import for_vmapped_tasks, nhwc_per_task
from lil_meta.models.backbones.task_conv import TaskConv2d

ADAPT = ("all", "head", "body")
CHANNELS_LAST = ("auto", "none", "query", "all")


class _Part(nn.Module):
    """One named child of the network, called alone under its full parameter names."""

    def __init__(self, name: str, module: nn.Module):
        super().__init__()
        self.part = name
        self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.part)(x)


def _prefixed(params: Params, prefix: str) -> Params:
    return {name: t for name, t in params.items() if name.startswith(prefix)}


class GBML(nn.Module):
    """Gradient-based meta-learning over a network ``model`` (images → logits).

    Args:
        model: the network f(x|θ); its parameters are the meta-parameters θ⁰.
        inner_lr: the inner learning rate α (the initial value when learned).
        inner_steps: inner steps S during meta-training.
        inner_steps_test: inner steps at evaluation (defaults to ``inner_steps``).
        engine: ``"vmap"`` (tasks batched with ``torch.func.vmap``), ``"loop"`` (one task at a
            time) or ``"auto"`` (vmap on GPU, loop on CPU, where it measured faster).
        first_order: detach the inner gradients (FOMAML).
        losses: the outer-loss terms (default: cross-entropy alone); see :mod:`losses`.
        metrics_period: compute the diagnostics that cost extra work — AC (eq. 4), which needs
            one more support gradient at θˢ, and ``acc_init``, one more query forward at θ⁰ —
            on the training steps whose index is a multiple of ``metrics_period`` (the logging
            steps; 0: never).
            In ``eval()`` mode ``acc_init`` is always computed and AC never.
        adapt: which parameters the default :meth:`adapted_names` adapts: ``"all"``,
            ``"head"`` (ANIL) or ``"body"`` (BOIL).
        inner_lr_mode: ``"scalar"``, ``"per_tensor"`` or ``"per_element"`` rates α.
        learn_inner_lr: meta-learn α (Meta-SGD); the rates are parameters of this module.
        precompute_features: when only the head adapts, compute the body's features once per
            task instead of re-running the body at every inner step (same numbers, less work).
        channels_last: which task images are laid out channels-last (NHWC): ``"none"``,
            ``"query"``, ``"all"`` or ``"auto"``. Only the memory layout changes, not the
            arithmetic. ``auto`` on CPU: the query set, where a task's biggest forward and
            backward run (oneDNN's convolutions and pooling are faster in NHWC; docs/performance.md),
            and the support set too unless a double backward runs through a convolution that is
            not a :class:`TaskConv2d` on the per-task loop (PyTorch's own double backward of a
            convolution, which vmap runs, is slower in NHWC, :class:`TaskConv2d`'s faster). On
            CUDA ``auto`` is ``none`` until a GPU measurement says otherwise.
        hessian_ratio: on logging steps, also the Hessian ratios hₖ of eq. 5 (``hess_ratio``;
            one Hessian-vector product per inner step and task, no graph; ``docs/design.md``).
        checkpoint_inner_steps: recompute each second-order inner step in the backward pass
            instead of keeping its graph (the memory switch, with ``solver.task_chunk``): the
            same meta-gradient for less memory and one more support pass per step. Runs on the
            per-task loop (``auto`` then picks it on every device).
        linearized_metrics: on logging steps and in eval mode, also how close the adapted
            network is to its tangent (kernel) predictor f⁰ + J·(θˢ − θ⁰): ``lin_err``,
            ``lin_agree``, ``lin_acc`` (one Jacobian-vector product per task, no graph;
            ``docs/design.md``).

    :meth:`adapted_names` is called once at the end of ``__init__`` to size the rates; a
    subclass's override may rely on the model and the constructor's arguments only.
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
        adapt: str = "all",
        inner_lr_mode: str = "scalar",
        learn_inner_lr: bool = False,
        precompute_features: bool = True,
        channels_last: str = "auto",
        checkpoint_inner_steps: bool = False,
        hessian_ratio: bool = True,
        linearized_metrics: bool = True,
    ):
        super().__init__()
        if engine not in (*ENGINES, "auto"):
            raise ConfigError(f"algorithm.engine: expected one of vmap, loop, auto; got '{engine}'")
        if inner_steps < 0 or (inner_steps_test is not None and inner_steps_test < 0):
            raise ConfigError("algorithm.inner_steps / inner_steps_test: must be >= 0")
        if adapt not in ADAPT:
            raise ConfigError(f"algorithm.adapt: expected one of {', '.join(ADAPT)}; got '{adapt}'")
        if channels_last not in CHANNELS_LAST:
            raise ConfigError(f"algorithm.channels_last: expected one of {', '.join(CHANNELS_LAST)}; "
                              f"got '{channels_last}'")
        if checkpoint_inner_steps and engine == "vmap":
            raise ConfigError("algorithm.checkpoint_inner_steps: runs on the per-task loop; set "
                              "algorithm.engine to loop or auto")
        if adapt != "all" and not isinstance(getattr(model, "head", None), nn.Module):
            raise ConfigError(f"algorithm.adapt={adapt}: the network has no .head module")
        self.model = model
        self.inner_steps = int(inner_steps)
        self.inner_steps_test = int(inner_steps if inner_steps_test is None else inner_steps_test)
        self.engine = engine
        self.first_order = bool(first_order)
        self.losses = nn.ModuleList(losses if losses is not None else [CrossEntropy()])
        self.metrics_period = int(metrics_period)
        self.adapt = adapt
        self.precompute_features = bool(precompute_features)
        self.channels_last = channels_last
        self.checkpoint_inner_steps = bool(checkpoint_inner_steps)
        self.hessian_ratio = bool(hessian_ratio)
        self.linearized_metrics = bool(linearized_metrics)
        adapted, _ = self.split_parameters()
        if not adapted:
            raise ConfigError(f"algorithm: no parameter adapts in the inner loop (adapt={adapt})")
        self.inner_lrs = InnerLR(inner_lr, adapted, inner_lr_mode, learn_inner_lr)
        self._vmap_networks: dict[int, nn.Module] = {}  # model id -> its copy for the vmap engine

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
        ``head.*`` (ANIL) or all but ``head.*`` (BOIL), after ``adapt``."""
        names = [name for name, _ in self.model.named_parameters()]
        if self.adapt == "all":
            return names
        return [n for n in names if n.startswith("head.") == (self.adapt == "head")]

    def inner_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The support-set objective the inner loop descends: ``CE(f(xs|θ), ys)``."""
        return F.cross_entropy(logits, labels)

    def inner_update(self, params: Params, grads: Params, step: int, lr_scale: float = 1.0) -> Params:
        """(b) One inner step ``θᵏ⁺¹ = θᵏ − α ⊙ gᵏ``, α from ``self.inner_lrs`` (by name), every
        rate times ``lr_scale`` (a term's rescaled trajectory, :meth:`AdaptedTask.retrace`)."""
        lrs = self.inner_lrs
        if lr_scale == 1.0:
            return {name: p - lrs[name] * grads[name] for name, p in params.items()}
        return {name: p - (lrs[name] * lr_scale) * grads[name] for name, p in params.items()}

    def inner_steps_now(self) -> int:
        """S for this forward: ``inner_steps`` in training, ``inner_steps_test`` in eval mode."""
        return self.inner_steps if self.training else self.inner_steps_test

    # ---- the meta-training step ----------------------------------------------------------
    @property
    def way(self) -> int:
        return self.model.head.out_features

    def resolved_engine(self, device: torch.device) -> str:
        if self.engine != "auto":
            return self.engine
        return "vmap" if device.type == "cuda" and not self.checkpoint_inner_steps else "loop"

    def auto_task_chunk(self, device: torch.device, step: int = 0) -> int:
        """What ``solver.task_chunk: auto`` means for this algorithm (:class:`engine.trainer.MetaTrainer`):
        1 on the per-task loop, where each task's forward and backward then runs on its own, so
        only one task's graph is ever alive (the update is the same up to float rounding); 0,
        the whole meta-batch, under vmap, which batches the tasks (the trainer shrinks it only
        if it does not fit in the device's memory)."""
        return 1 if self.resolved_engine(device) == "loop" else 0

    def resolved_channels_last(self, device: torch.device) -> str:
        """``none``, ``query`` or ``all``: the images laid out NHWC (``channels_last``)."""
        if self.channels_last != "auto":
            return self.channels_last
        if device.type != "cpu":
            return "none"
        no_double_backward = self.first_order or self.head_only(self.split_parameters()[0])
        own_convs = self.resolved_engine(device) == "loop" and all(  # under vmap the convolutions are PyTorch's
            isinstance(m, TaskConv2d) for m in self.model.modules() if isinstance(m, nn.Conv2d))
        return "all" if no_double_backward or own_convs else "query"

    def prepared(self, batch: TaskBatch) -> TaskBatch:
        """The batch, checked against the head (a :class:`TaskBatch` is checked when it is
        made, so this reads no tensor), its images in the layout of ``channels_last``."""
        if not isinstance(batch, TaskBatch):
            batch = TaskBatch(*batch)
        if batch.way != self.way:
            raise ValueError(f"TaskBatch.support_y: tasks are {batch.way}-way but the model's head has "
                             f"{self.way} outputs (set data.way to match)")
        layout = self.resolved_channels_last(batch.query_x.device)
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

    def head_only(self, adapted: Params) -> bool:
        """True when the inner loop can run on the head alone, over precomputed features: the
        adapted set is exactly ``model.head``'s parameters and every other tensor of the
        network lives in ``model.features``."""
        model = self.model
        if not (self.precompute_features and isinstance(getattr(model, "features", None), nn.Module)
                and isinstance(getattr(model, "head", None), nn.Module)):
            return False
        head = {f"head.{n}" for n, _ in model.head.named_parameters()}
        everything = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
        return adapted.keys() == head and all(n.startswith(("head.", "features.")) for n in everything)

    def network(self, vmapped: bool) -> nn.Module:
        """The network the per-task function evaluates: ``model``, or for the vmap engine its
        parameter-free copy built for vmap (:func:`~models.backbones.layers.for_vmapped_tasks`)."""
        if not vmapped:
            return self.model
        key = id(self.model)
        if key not in self._vmap_networks:
            self._vmap_networks = {key: for_vmapped_tasks(self.model)}
        return self._vmap_networks[key]

    def task_network(self, adapted: Params, frozen: Params, support_x, query_x, vmapped: bool = False):
        """The network the inner loop runs and its inputs: ``(net, frozen, support_x, query_x)``.

        MAML/BOIL: the whole model on the images. ANIL (:meth:`head_only`): the head alone on
        the features ``model.features(x)``, computed here once per task — with the body's θ⁰,
        so still differentiable with respect to the body for the outer loss. Support and query
        go through the body separately, as in the full forward (BatchNorm uses each set's own
        statistics). Parameter names keep their full form (``head.weight``) either way.
        """
        model = self.network(vmapped)
        if not self.head_only(adapted):
            return model, frozen, support_x, query_x
        body = _Part("features", model.features)
        body_params = _prefixed(frozen, "features.")
        support_f, query_f = (functional_call(body, body_params, (x,)) for x in (support_x, query_x))
        return _Part("head", model.head), _prefixed(frozen, "head."), support_f, query_f

    def task_forward(self, adapted: Params, frozen: Params, support_x, support_y, query_x, *,
                     diagnostics: bool, vmapped: bool) -> dict:
        """One task: adapt on the support set (:func:`~engine.inner_loop.adapt`), then what the
        outputs and the loss terms need: ``logits`` (query, at θˢ), ``trajectory``, on logging
        steps and in eval mode the diagnostics' logits (:func:`~models.algorithms.metrics.diagnostic_logits`),
        and each asking term's ``per_task`` tensors under ``extras[key]``. ``diagnostics``
        (logging steps): also gˢ for AC and the Hessian ratios hₖ of eq. 5.

        The diagnostics carry no graph and run before the query pass that builds one; where the
        inner loop keeps a graph (second order, in training) they come from a trajectory without
        graph run first (S more support passes), so their temporaries never add to the graph's.
        """
        net, frozen, support_x, query_x = self.task_network(adapted, frozen, support_x, query_x, vmapped)
        steps = self.inner_steps_now()
        run = lambda **diag: adapt(  # noqa: E731
            net, adapted, frozen, support_x, support_y, steps=steps, update=self.inner_update,
            first_order=self.first_order, inner_loss=self.inner_loss, checkpoint_steps=self.checkpoint_inner_steps,
            vmapped=vmapped, **diag)
        diag = {"final_grad": diagnostics, "hessian_ratios": diagnostics and self.hessian_ratio}
        logged = lambda theta_s: diagnostic_logits(  # noqa: E731
            net, adapted, theta_s, frozen, query_x, vmapped, self.linearized_metrics and steps > 0)
        out: dict = {}
        if diagnostics and steps > 0 and not self.first_order and torch.is_grad_enabled():
            with torch.no_grad():
                probe = run(**diag)
            out.update(logged(probe.params))
            adaptation = run()
            adaptation = adaptation._replace(trajectory=adaptation.trajectory._replace(
                final_grad_norm=probe.trajectory.final_grad_norm, hess_ratios=probe.trajectory.hess_ratios))
        else:
            adaptation = run(**diag)
            if diagnostics or not self.training:
                out.update(logged(adaptation.params))
        logits = logits_at(net, adaptation.params, frozen, query_x, vmapped=vmapped)
        task = AdaptedTask(net, frozen, support_x, support_y, query_x, adapted, adaptation, logits,
                           self.inner_update, self.inner_loss, self.first_order, self.checkpoint_inner_steps,
                           vmapped)
        out.update(logits=logits, trajectory=adaptation.trajectory,
                   extras={term.key: term.per_task(task) for term in self.losses if term.asks_per_task})
        return out

    def begin_step(self, step: int) -> None:
        """Once per training step, before its forward passes: each term's ``begin_step``."""
        for term in self.losses:
            term.begin_step(step)

    def forward(self, batch: TaskBatch, step: int = 0) -> dict[str, torch.Tensor]:
        """The outer loss and metrics of a meta-batch (or of a chunk of one) at training step
        ``step`` (module doc): on a logging step (``step % metrics_period == 0``, so also a
        direct call's default), the diagnostics too."""
        batch = self.prepared(batch)
        diagnostics = self.training and self.metrics_period > 0 and step % self.metrics_period == 0
        adapted, frozen = self.split_parameters()

        def task_fn(adapted, frozen, sx, sy, qx, *, vmapped):
            return self.task_forward(adapted, frozen, sx, sy, qx, diagnostics=diagnostics, vmapped=vmapped)

        per_task = map_tasks(task_fn, (adapted, frozen), (batch.support_x, batch.support_y, batch.query_x),
                             self.resolved_engine(batch.support_x.device))
        return self.outputs(per_task, batch.query_y)

    def outputs(self, per_task: dict, query_y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output dict: each term's weighted value ``loss_<key>`` and metrics, their sum
        ``loss``, the accuracies, the per-task finiteness flags and the linearity metrics."""
        logits, trajectory = per_task["logits"], per_task["trajectory"]
        out: dict[str, torch.Tensor] = {}
        total = 0.0
        for term in self.losses:
            value = term(OuterInputs(logits, query_y, trajectory, per_task["extras"].get(term.key, {})))
            value, metrics = value if isinstance(value, tuple) else (value, {})
            weighted = term.weight * value
            total = total + weighted
            out[f"loss_{term.key}"] = weighted.detach()
            if term.metric:
                out[term.metric] = value.detach()
            out.update({k: v.detach() for k, v in metrics.items()})
        out["loss"] = total
        out["task_acc"] = task_accuracy(logits, query_y)
        out["acc"] = out["task_acc"].mean()
        # where a NaN/inf came from, per task (read by diagnose() only when the loss is not finite)
        out["task_logits_finite"] = torch.isfinite(logits.detach()).flatten(1).all(1)
        out["task_inner_finite"] = (torch.isfinite(trajectory.step_norms.detach()).all(-1)
                                    & torch.isfinite(trajectory.grad_norms.detach()).all(-1))
        if "logits_init" in per_task:
            out["task_acc_init"] = task_accuracy(per_task["logits_init"], query_y)
            out["acc_init"] = out["task_acc_init"].mean()
        if "lin_logits" in per_task:
            out.update(kernel_metrics(logits, per_task["lin_init_logits"], per_task["lin_logits"], query_y))
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
