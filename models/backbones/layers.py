"""Layers shared by the backbones."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class _BatchStatsNorm(torch.autograd.Function):
    """Training-mode batch norm (fused kernel) whose backward is itself an autograd op with a
    compact derivative, :class:`_BatchNormBackward`.

    Second-order MAML differentiates each BatchNorm's backward once more (the inner gradient is
    part of the outer graph). PyTorch's own double backward of the fused op builds about fifty
    full-size tensors per layer; the same backward written in elementary ops kept about five
    for the outer backward, :class:`_BatchNormBackward` keeps one (``docs/performance.md`` has
    the bytes). Checked against ``F.batch_norm`` with ``gradcheck``/``gradgradcheck`` in fp64
    (``tests/models/backbones/test_conv4.py``, ``test_layers.py``).

    Under ``torch.func.vmap`` over tasks (the vmap engine) the :meth:`vmap` rule folds the task
    dimension into the channels: per-task, per-channel statistics of ``[tasks, n, C, H, W]``
    are batch norm of ``[n, tasks·C, H, W]`` with the per-task γ, β as ``tasks·C`` channels
    (:func:`_fold`), so a meta-batch is one fused call, and so is its backward
    (:class:`_BatchNormBackward` folds the same way). PyTorch's own batching rule for the fused
    kernel is never reached: with per-task γ, β its second-order gradient is wrong
    (docs/design.md, "BatchNorm under vmap").
    """

    @staticmethod
    def forward(x, weight, bias, eps):
        return torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, eps = inputs
        _, mean, rstd = output
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.save_for_forward(x, weight, mean, rstd)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, rstd)

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_rstd):
        x, weight, mean, rstd = ctx.saved_tensors
        return (*_BatchNormBackward.apply(grad_y, x, weight, mean, rstd, ctx.eps), None)

    @staticmethod
    def jvp(ctx, tangent_x, tangent_weight, tangent_bias, _tangent_eps):
        """The forward-mode derivative (the kernel metrics' ``torch.func.jvp``). With ``s = w·r``,
        ``ẏ = s·(ẋ − mean(ẋ)) + x̂·(ẇ − s·mean(ẋ·x̂)) + ḃ``, rewritten as ``s·ẋ + k·x + k₀``
        per channel (``x̂ = r·(x − μ)``) so that no normalised copy of ``x`` is made: about
        four activations at once (``x``, ``ẋ``, ``y`` and ``ẏ``)."""
        x, weight, mean, rstd = ctx.saved_tensors
        dims = (0, 2, 3)
        zero = torch.zeros_like(weight)
        if tangent_x is None:
            mean_t = along = zero
        else:
            mean_t = tangent_x.mean(dims)
            along = rstd * ((tangent_x * x).mean(dims) - mean * mean_t)  # mean(ẋ·x̂)
        scale = weight * rstd
        coef = rstd * ((zero if tangent_weight is None else tangent_weight) - scale * along)  # of x
        shift = (zero if tangent_bias is None else tangent_bias) - scale * mean_t - coef * mean
        tangent_y = torch.zeros_like(x) if tangent_x is None else tangent_x * _per_channel(scale)
        # out of place: in-place addcmul_ has no batching rule (vmap engine's kernel metrics)
        return torch.addcmul(tangent_y, x, _per_channel(coef)) + _per_channel(shift), None, None

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, eps):
        """Tasks folded into channels (class doc): ``y`` comes back as ``[n, tasks, C, H, W]``
        (task dim 1, which the next convolution's batching rule folds again without a copy)."""
        tasks = info.batch_size
        y, mean, rstd = _BatchStatsNorm.apply(_fold(x, in_dims[0], tasks), _fold_channels(weight, in_dims[1], tasks),
                                              _fold_channels(bias, in_dims[2], tasks), eps)
        return (_unfold(y, tasks), mean.view(tasks, -1), rstd.view(tasks, -1)), (1, 0, 0)


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


def _fold(t: torch.Tensor, task_dim: int | None, tasks: int) -> torch.Tensor:
    """A batch of tasks' ``[n, C, H, W]`` tensors (task dim ``task_dim``, ``None``: shared by
    all) as one ``[n, tasks·C, H, W]`` tensor: a view when the task dim is dim 1 already."""
    t = t.unsqueeze(1).expand(t.shape[0], tasks, *t.shape[1:]) if task_dim is None else t.movedim(task_dim, 1)
    return t.reshape(t.shape[0], tasks * t.shape[2], *t.shape[3:])


def _fold_channels(t: torch.Tensor, task_dim: int | None, tasks: int) -> torch.Tensor:
    """Per-task ``[C]`` vectors as one ``[tasks·C]`` vector, in :func:`_fold`'s channel order."""
    t = t.expand(tasks, *t.shape) if task_dim is None else t.movedim(task_dim, 0)
    return t.reshape(-1)


def _unfold(t: torch.Tensor, tasks: int) -> torch.Tensor:
    """:func:`_fold`'s inverse as a view, the task dim at 1: ``[n, tasks, C, H, W]``."""
    return t.view(t.shape[0], tasks, -1, *t.shape[2:])


def _is_wrapped(t: torch.Tensor) -> bool:
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


class _BatchNormBackward(torch.autograd.Function):
    """``(grad_y, x, weight) ↦ (grad_x, grad_weight, grad_bias)``, the backward of training-mode
    batch norm over ``[N, C, H, W]`` (statistics over N, H, W), as a differentiable function.

    The forward is PyTorch's fused ``native_batch_norm_backward`` (``mean``, ``rstd``: the
    forward's batch statistics of ``x``, passed in to save recomputing them). The backward is
    its derivative written out by hand. With ``x̂ = (x − μ)·r``, ``r = (σ² + ε)^-½`` and means
    over the reduced dims: ``ḡ = mean(g)``, ``m = mean(g·x̂)``, ``h = g − ḡ − x̂·m``, and
    ``grad_x = w·r·h``, ``grad_weight = N·m``, ``grad_bias = N·ḡ``. Given the upstream
    gradients ``a``, ``p``, ``q`` of those three outputs, and ``ā = mean(a)``,
    ``α = mean(a·x̂)``, ``η = mean(a·h)`` (using ``∂x̂ⱼ/∂xᵢ = r(δᵢⱼ − 1/N − x̂ᵢx̂ⱼ/N)``):

    - ``∂/∂g = q + p·x̂ + w·r·(a − ā − x̂·α)``
    - ``∂/∂w = N·r·η``
    - ``∂/∂x = p·r·h − w·r²·(x̂·η + m·(a − ā − x̂·α) + h·α)``

    Beyond what the batch-norm forward already keeps (``x``, ``weight``, ``mean``, ``rstd``),
    it saves one full-size tensor, ``grad_y``. The outer backward (no graph) evaluates these
    with the sums expanded into per-channel coefficients, one fused pass per output; when this
    backward itself needs a graph (a third derivative, e.g. ``gradgradcheck``), the plain form
    runs, with μ and r recomputed from ``x`` so that they carry their dependence on it.
    """

    @staticmethod
    def forward(grad_y, x, weight, mean, rstd, eps):
        return torch.ops.aten.native_batch_norm_backward(grad_y, x, weight, None, None, mean, rstd, True, eps,
                                                         [True, True, True])

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_y, x, weight, mean, rstd, eps = inputs
        _, grad_weight, grad_bias = output  # Σ g·x̂ and Σ g per channel: kept, they are small
        ctx.save_for_backward(grad_y, x, weight, mean, rstd, grad_weight, grad_bias)
        ctx.eps = eps

    @staticmethod
    def vmap(info, in_dims, grad_y, x, weight, mean, rstd, eps):
        """Tasks folded into channels, as :meth:`_BatchStatsNorm.vmap`."""
        tasks, (g_dim, x_dim, w_dim, mean_dim, rstd_dim, _) = info.batch_size, in_dims
        grad_x, grad_weight, grad_bias = _BatchNormBackward.apply(
            _fold(grad_y, g_dim, tasks), _fold(x, x_dim, tasks), _fold_channels(weight, w_dim, tasks),
            _fold_channels(mean, mean_dim, tasks), _fold_channels(rstd, rstd_dim, tasks), eps)
        return (_unfold(grad_x, tasks), grad_weight.view(tasks, -1), grad_bias.view(tasks, -1)), (1, 0, 0)

    @staticmethod
    def backward(ctx, a, p, q):
        # the plain form also where a transform differentiates this backward (a Hessian-vector
        # product under vmap): its in-place fused ops have no batching rule
        if torch.is_grad_enabled() or _is_wrapped(a):
            return _BatchNormBackward._differentiable_backward(ctx, a, p, q)
        g, x, weight, mean, rstd, sum_gx, sum_g = ctx.saved_tensors
        dims, count = (0, 2, 3), x.numel() // x.shape[1]
        c = _per_channel
        # the formulas of the class doc, each output one fused pass over per-channel coefficients
        x_hat = torch.addcmul(c(-mean * rstd), x, c(rstd))
        g_mean, m = sum_g / count, sum_gx / count
        a_mean, alpha = a.sum(dims) / count, (a * x_hat).sum(dims) / count
        eta = (a * g).sum(dims) / count - a_mean * g_mean - m * alpha  # mean(a·h)
        wr = weight * rstd
        grad_g = torch.addcmul(c(q - wr * a_mean), a, c(wr)).addcmul_(x_hat, c(p - wr * alpha))
        k1, k2, k3 = p * rstd - wr * rstd * alpha, wr * rstd * eta, wr * rstd * m
        grad_x = torch.addcmul(c(k3 * a_mean - k1 * g_mean), g, c(k1)).addcmul_(a, c(-k3))
        grad_x.addcmul_(x_hat, c(k3 * alpha - m * k1 - k2))
        return grad_g, grad_x, count * rstd * eta, None, None, None

    @staticmethod
    def _differentiable_backward(ctx, a, p, q):
        """The same derivatives in the plain form of the class doc, with μ and r recomputed
        from ``x``: the backward that a third derivative differentiates."""
        g, x, weight, *_ = ctx.saved_tensors
        dims, count = (0, 2, 3), x.numel() // x.shape[1]
        centred = x - x.mean(dims, keepdim=True)
        r = torch.rsqrt(centred.square().mean(dims, keepdim=True) + ctx.eps)
        x_hat = centred * r
        m = (g * x_hat).mean(dims, keepdim=True)
        h = g - g.mean(dims, keepdim=True) - x_hat * m
        alpha = (a * x_hat).mean(dims, keepdim=True)
        eta = (a * h).mean(dims, keepdim=True)
        a_centred = a - a.mean(dims, keepdim=True) - x_hat * alpha
        w = _per_channel(weight)
        grad_g = _per_channel(q) + _per_channel(p) * x_hat + (w * r) * a_centred
        grad_w = (count * r * eta).flatten()
        grad_x = (_per_channel(p) * r) * h - (w * r.square()) * (x_hat * eta + m * a_centred + h * alpha)
        return grad_g, grad_x, grad_w, None, None, None


class _MaxPool2d(torch.autograd.Function):
    """Max-pooling over non-overlapping ``k × k`` windows that keeps only the argmax indices
    for its backward (PyTorch's op keeps its input as well, which its backward does not need).

    The backward scatters each output gradient to its argmax (:class:`_MaxUnpool2d`), whose
    derivative gathers at the same indices, so the second-order graph keeps nothing more.
    Non-overlapping windows make every index unique, so scattering and summing agree.

    On CPU a contiguous (NCHW) input is pooled channels-last and the result laid back out NCHW:
    PyTorch's NCHW kernel takes several times as long as the copies and its channels-last
    kernel together (docs/performance.md), and both pick the same maximum and index in every
    window (the first maximum in row-major order), so values and gradients are unchanged.
    """

    @staticmethod
    def forward(x, k):
        if x.device.type == "cpu" and x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last):
            out, indices = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), k, k, return_indices=True)
            return out.contiguous(), indices.contiguous()
        return F.max_pool2d(x, k, k, return_indices=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, k = inputs
        _, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices)
        ctx.save_for_forward(indices)
        ctx.k, ctx.size = k, x.shape[-2:]

    @staticmethod
    def backward(ctx, grad_out, _grad_indices):
        (indices,) = ctx.saved_tensors
        return _MaxUnpool2d.apply(grad_out, indices, ctx.k, ctx.size), None

    @staticmethod
    def jvp(ctx, tangent_x, _tangent_k):
        """The input's tangent at each window's argmax."""
        (indices,) = ctx.saved_tensors
        return _at_argmax(tangent_x, indices), None


def _at_argmax(t: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``t`` (``[N, C, H, W]``) at each window's argmax (``indices`` into ``H·W``), in ``t``'s
    layout. A channels-last ``t`` is gathered as ``[N, H·W, C]``: the flattened NCHW view of it
    is strided, gathers several times slower, and its result is NCHW, which turns every later
    op of the NHWC graph into a mixed-layout one."""
    if t.is_contiguous() or not t.is_contiguous(memory_format=torch.channels_last):
        return t.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)
    n, c, h, w = indices.shape
    picked = t.permute(0, 2, 3, 1).reshape(n, -1, c).gather(1, indices.permute(0, 2, 3, 1).reshape(n, -1, c))
    return picked.view(n, h, w, c).permute(0, 3, 1, 2)


class _MaxUnpool2d(torch.autograd.Function):
    """The max-pool's backward: each output gradient scattered to its window's argmax
    (``max_unpool2d``). Its derivative gathers at the same indices (:func:`_at_argmax`), in the
    layout of the gradient it is given."""

    @staticmethod
    def forward(grad_out, indices, k, size):
        return F.max_unpool2d(grad_out, indices, k, k, output_size=size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, indices, ctx.k, ctx.size = inputs
        ctx.save_for_backward(indices)
        ctx.save_for_forward(indices)

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        return _at_argmax(grad, indices), None, None, None

    @staticmethod
    def jvp(ctx, tangent_grad_out, *_):
        (indices,) = ctx.saved_tensors
        return F.max_unpool2d(tangent_grad_out, indices, ctx.k, ctx.k, output_size=ctx.size)


class TaskMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d(k)`` (stride k, no padding) whose saved state is the argmax indices alone
    (:class:`_MaxPool2d`); under ``vmap`` over tasks (``vmapped``), PyTorch's own op."""

    def __init__(self, kernel_size: int, vmapped: bool = False):
        super().__init__(kernel_size)
        self.vmapped = bool(vmapped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.vmapped or x.dim() != 4:
            return super().forward(x)
        return _MaxPool2d.apply(x, int(self.kernel_size))[0]


class TaskBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with the current batch's statistics (MAML convention).

    No running statistics are kept (``track_running_stats=False``): in the inner loop and the
    outer loop alike, a task's support or query set is normalised by its own mean and variance.

    The fused kernel runs, with a backward that is cheap to differentiate again
    (:class:`_BatchStatsNorm`), on the per-task loop and under ``vmap`` over tasks alike (there
    the tasks fold into the channels). An input of another dtype than the weights (a
    ``bf16`` autocast forward) is normalised in the weights' dtype.

    With ``steps`` > 0 (MAML++'s per-step weights and biases, BNWB) ``weight`` and ``bias`` are
    ``[steps, C]`` (names unchanged): the forward at inner step ``k`` uses row ``k``, and the
    network passes ``k`` explicitly (``forward(x, step=k)``; :func:`engine.inner_loop.logits_at`
    says which step each forward is). The rows start as a plain layer's (ones, zeros).
    """

    takes_step = True

    def __init__(self, num_features: int, eps: float = 1e-5, steps: int = 0):
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=False)
        if steps < 0:
            raise ValueError(f"TaskBatchNorm2d: steps must be >= 0, got {steps}")
        self.steps = int(steps)
        if self.steps:
            self.weight = nn.Parameter(torch.ones(self.steps, num_features))
            self.bias = nn.Parameter(torch.zeros(self.steps, num_features))

    def forward(self, x: torch.Tensor, step: int | None = None) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if self.steps:
            if step is None or not 0 <= step < self.steps:
                raise ValueError(f"TaskBatchNorm2d: per-step weights (model.backbone.per_step_bn) hold rows for "
                                 f"inner steps 0..{self.steps - 1}; the forward was asked for step {step} (call "
                                 "the network as model(x, step=k), with k inside the trained inner steps)")
            weight, bias = weight[step], bias[step]
        return self._batch_stats(x, weight, bias, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", steps={self.steps}" if self.steps else "")

    @staticmethod
    def _batch_stats(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        if x.dtype != weight.dtype:
            x = x.to(weight.dtype)
        return _BatchStatsNorm.apply(x, weight, bias, eps)[0]


class StepSequential(nn.Sequential):
    """``nn.Sequential`` that hands the inner step to the children that take one (a
    ``takes_step`` attribute: :class:`TaskBatchNorm2d`, nested ``StepSequential``); ``step=None``
    (the default) is a plain ``nn.Sequential``."""

    takes_step = True

    def forward(self, x: torch.Tensor, step: int | None = None) -> torch.Tensor:
        for module in self:
            x = module(x, step=step) if getattr(module, "takes_step", False) else module(x)
        return x


def per_step_parameters(model: nn.Module) -> tuple[set[str], int]:
    """The names of ``model``'s per-step BatchNorm weights and biases (:class:`TaskBatchNorm2d`
    with ``steps``) and the fewest rows any of them has (0: none)."""
    names, rows = set(), []
    for prefix, module in model.named_modules():
        if isinstance(module, TaskBatchNorm2d) and module.steps:
            names |= {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)}
            rows.append(module.steps)
    return names, min(rows, default=0)


def nhwc_per_task(images: torch.Tensor) -> torch.Tensor:
    """``[tasks, n, C, H, W]`` images with each task's ``[n, C, H, W]`` slice channels-last."""
    if images.dim() != 5:
        return images
    return images.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def for_vmapped_tasks(model: nn.Module) -> nn.Module:
    """A parameter-free copy of ``model`` (on the ``meta`` device) whose layers that compute
    differently under ``torch.func.vmap`` over tasks are built for it (``vmapped=True``).

    The vmap engine evaluates it with ``functional_call`` and the real tensors, so the copy
    holds none of its own; a layer of a user backbone opts in with a boolean ``vmapped``
    attribute. Hooks registered on ``model`` are not copied: they belong to the real network.
    """
    twin = copy.deepcopy(model).to("meta")
    for module in twin.modules():
        if isinstance(getattr(module, "vmapped", None), bool):
            module.vmapped = True
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                      "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            getattr(module, hooks, {}).clear()
    return twin
