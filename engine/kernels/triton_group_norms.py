"""Fused Triton path of :func:`engine.kernels.group_norms`, as a differentiable autograd.Function.

Layout (multi-tensor, no concatenation): every tensor is viewed as ``[B, n_t]`` (``B`` = the
product of the leading vmap dims, ``n_t`` its per-task size; a stride-0 batch dim is kept, so
meta-parameters broadcast over tasks are never copied). Two small int64 tables describe the
tensors: one per shape, built once and kept on the device (per tensor ``n_t``, the batch
strides and the group, and the block table listing every ``CHUNK``-element chunk of every
tensor), and one per call with the data pointers and alignment flags, copied from pinned memory
without waiting (on CUDA), so a launch never waits on the host. One launch, grid ``(chunks, B)``, sums the squares of
each chunk in fp32 (fp64 for fp64 inputs) and ``tl.atomic_add``s them into ``out[b, g]``; the
sqrt is one small torch op on ``[B, groups]``. The backward is one launch over the same tables,
writing ``grad_x = (x - y) * grad_out / norm`` and, in the same pass, ``grad_y = -grad_x``.
Full chunks of tensors whose addresses are all 16-byte aligned (flagged per tensor on the host)
take an unmasked path with ``tl.multiple_of`` hints, so they compile to vector loads; the rest
(tails, odd strides) are masked. Atomics make the fp32 summation order, hence the last bits,
vary from run to run.

Transforms: ``torch.func.vmap`` reaches the Function's ``vmap`` staticmethod, which moves every
batch dim to the front (expanding unbatched tensors as stride-0 views) and applies the Function
again with one more leading dim, so a whole meta-batch is still one launch and the autograd node
sits on the physical ``[B, ...]`` tensors. ``setup_context`` makes it usable under
``torch.func.grad`` (``torch.library.custom_op``'s ``register_autograd`` is not: its generated
Function fails there). When the backward itself must be differentiable
(``create_graph=True``, always the case under ``torch.func.grad``) or sees functorch-wrapped
tensors, it uses torch ops instead of the kernel, so double backward is correct, just not fused.
Forward-mode AD (``jvp``, ``jacfwd``) is not supported.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 1024
ITERS = 4
CHUNK = BLOCK * ITERS
_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64,
              torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
# shape rows (per shape, cached on the device), one column per tensor: numel, x batch stride,
# y batch stride, group. pointer rows (per call): x ptr, y ptr, grad_x ptr, grad_y ptr,
# "vector-aligned" flag (every address the tensor's chunks touch is 16-byte aligned, so full
# chunks take the unmasked, vectorized path).
_ALIGN = 16


@triton.jit
def _load(ptr, offs, n, MASKED: tl.constexpr, ACC: tl.constexpr):
    if MASKED:
        v = tl.load(ptr + offs, mask=offs < n, other=0.0)
    else:
        v = tl.load(ptr + offs)
    return v.to(ACC)


@triton.jit
def _store(ptr, offs, n, v, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptr + offs, v, mask=offs < n)
    else:
        tl.store(ptr + offs, v)


@triton.jit
def _chunk_sumsq(x_ptr, y_ptr, start, n, HAS_Y: tl.constexpr, MASKED: tl.constexpr,
                 ACC: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=ACC)
    for i in tl.static_range(ITERS):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        d = _load(x_ptr, offs, n, MASKED, ACC)
        if HAS_Y:
            d -= _load(y_ptr, offs, n, MASKED, ACC)
        acc += d * d
    return tl.sum(acc, axis=0)


@triton.jit
def _chunk_scale(x_ptr, y_ptr, gx_ptr, gy_ptr, c, start, n, HAS_Y: tl.constexpr,
                 WRITE_GY: tl.constexpr, MASKED: tl.constexpr, DT: tl.constexpr,
                 ACC: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    for i in tl.static_range(ITERS):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        d = _load(x_ptr, offs, n, MASKED, ACC)
        if HAS_Y:
            d -= _load(y_ptr, offs, n, MASKED, ACC)
        gx = d * c
        _store(gx_ptr, offs, n, gx.to(DT), MASKED)
        if WRITE_GY:
            _store(gy_ptr, offs, n, (-gx).to(DT), MASKED)


@triton.jit
def _sumsq_kernel(shape, ptrs, blocks, out, n_blocks, n_tensors, n_groups, HAS_Y: tl.constexpr,
                  DT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    t = tl.load(blocks + pid)
    start = tl.load(blocks + n_blocks + pid)
    n = tl.load(shape + t)
    x_ptr = tl.load(ptrs + t).to(tl.pointer_type(DT)) + b * tl.load(shape + n_tensors + t)
    y_ptr = tl.load(ptrs + n_tensors + t).to(tl.pointer_type(DT)) + b * tl.load(shape + 2 * n_tensors + t)
    if (start + BLOCK * ITERS <= n) & (tl.load(ptrs + 4 * n_tensors + t) != 0):
        s = _chunk_sumsq(tl.multiple_of(x_ptr, 16), tl.multiple_of(y_ptr, 16),
                         tl.multiple_of(start, 16), n, HAS_Y, False, ACC, BLOCK, ITERS)
    else:
        s = _chunk_sumsq(x_ptr, y_ptr, start, n, HAS_Y, True, ACC, BLOCK, ITERS)
    tl.atomic_add(out + b * n_groups + tl.load(shape + 3 * n_tensors + t), s)


@triton.jit
def _scale_kernel(shape, ptrs, blocks, coef, n_blocks, n_tensors, n_groups, HAS_Y: tl.constexpr,
                  WRITE_GY: tl.constexpr, DT: tl.constexpr, ACC: tl.constexpr,
                  BLOCK: tl.constexpr, ITERS: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    t = tl.load(blocks + pid)
    start = tl.load(blocks + n_blocks + pid)
    n = tl.load(shape + t)
    x_ptr = tl.load(ptrs + t).to(tl.pointer_type(DT)) + b * tl.load(shape + n_tensors + t)
    y_ptr = tl.load(ptrs + n_tensors + t).to(tl.pointer_type(DT)) + b * tl.load(shape + 2 * n_tensors + t)
    gx_ptr = tl.load(ptrs + 2 * n_tensors + t).to(tl.pointer_type(DT)) + b * n
    gy_ptr = tl.load(ptrs + 3 * n_tensors + t).to(tl.pointer_type(DT)) + b * n
    c = tl.load(coef + b * n_groups + tl.load(shape + 3 * n_tensors + t))
    if (start + BLOCK * ITERS <= n) & (tl.load(ptrs + 4 * n_tensors + t) != 0):
        _chunk_scale(tl.multiple_of(x_ptr, 16), tl.multiple_of(y_ptr, 16),
                     tl.multiple_of(gx_ptr, 16), tl.multiple_of(gy_ptr, 16), c,
                     tl.multiple_of(start, 16), n, HAS_Y, WRITE_GY, False, DT, ACC, BLOCK, ITERS)
    else:
        _chunk_scale(x_ptr, y_ptr, gx_ptr, gy_ptr, c, start, n, HAS_Y, WRITE_GY, True, DT, ACC,
                     BLOCK, ITERS)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_rows(t: Tensor, lead: int) -> Tensor:
    """``t`` as ``[prod(lead dims), n]`` with unit inner stride; a view whenever possible."""
    v = t.reshape(math.prod(t.shape[:lead]), math.prod(t.shape[lead:]))
    return v if v.shape[1] <= 1 or v.stride(1) == 1 else v.contiguous()


@functools.lru_cache(maxsize=64)
def _shape_tables(shape_rows: tuple[tuple[int, ...], ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """The per-shape tables on ``device``, built once: ``shape_rows`` (numel, x and y batch
    strides, group per tensor) as ``[4, tensors]`` int64, and the block table ``[2, chunks]``:
    the tensor index and the first element of every chunk."""
    counts = torch.tensor([math.ceil(n / CHUNK) for n in shape_rows[0]], dtype=torch.int64)
    owner = torch.repeat_interleave(torch.arange(len(shape_rows[0])), counts)
    first = torch.cumsum(counts, 0) - counts
    start = (torch.arange(owner.numel()) - first[owner]) * CHUNK
    return torch.tensor(shape_rows, dtype=torch.int64).to(device), torch.stack([owner, start]).to(device)


def _aligned(ptr_rows: list[list[int]], shape_rows: list[list[int]], batch: int, size: int) -> list[int]:
    """Per tensor, 1 if all its pointers (and, for ``batch > 1``, batch strides, the gradients'
    being ``n``) are ``_ALIGN``-byte aligned: the kernels' ``tl.multiple_of`` hints rely on it."""
    strides = (shape_rows[1], shape_rows[2], shape_rows[0])
    return [int(all(p[t] % _ALIGN == 0 for p in ptr_rows)
                and (batch == 1 or all(s[t] * size % _ALIGN == 0 for s in strides)))
            for t in range(len(ptr_rows[0]))]


def _to_device(rows: list[list[int]], device: torch.device) -> Tensor:
    """An int64 table on ``device``; on CUDA through pinned memory, so the copy waits on nothing."""
    table = torch.tensor(rows, dtype=torch.int64)
    if device.type != "cuda":
        return table
    return table.pin_memory().to(device, non_blocking=True)


def _launch(kernel, xs: list[Tensor], ys: list[Tensor], groups: int, lead: int,
            extra: Tensor, *, grads: tuple[list[Tensor], list[Tensor]] | None = None, **flags) -> None:
    """Build the per-call pointer table and run ``kernel`` once over all chunks of all tensors."""
    if xs[0].device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("group_norms backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 "
                           "set before triton is imported")
    batch = math.prod(xs[0].shape[:lead])
    if batch == 0:
        return
    xv = [_as_rows(x, lead) for x in xs]
    yv = [_as_rows(y, lead) for y in ys] or xv
    n_tensors, per_group = len(xs), len(xs) // groups
    zeros = [0] * n_tensors
    gx, gy = grads if grads is not None else (zeros, zeros)
    shape_rows = [[v.shape[1] for v in xv], [v.stride(0) for v in xv], [v.stride(0) for v in yv],
                  [t // per_group for t in range(n_tensors)]]
    ptr_rows = [[v.data_ptr() for v in xv], [v.data_ptr() for v in yv],
                [g.data_ptr() if isinstance(g, Tensor) else 0 for g in gx],
                [g.data_ptr() if isinstance(g, Tensor) else 0 for g in gy]]
    ptr_rows.append(_aligned(ptr_rows[:4], shape_rows, batch, xs[0].element_size()))
    dtype, device = xs[0].dtype, xs[0].device
    shape, blocks = _shape_tables(tuple(map(tuple, shape_rows)), device)
    n_blocks = blocks.shape[1]
    if n_blocks == 0:
        return
    ptrs = _to_device(ptr_rows, device)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        kernel[(n_blocks, batch)](shape, ptrs, blocks, extra, n_blocks, n_tensors, groups,
                                  HAS_Y=bool(ys), DT=_TL_DTYPES[dtype],
                                  ACC=_TL_DTYPES[_acc_dtype(dtype)], BLOCK=BLOCK, ITERS=ITERS,
                                  **flags)


def _norms(xs: tuple[Tensor, ...], ys: tuple[Tensor, ...], groups: int, lead: int) -> Tensor:
    shape = tuple(xs[0].shape[:lead])
    out = torch.zeros(math.prod(shape), groups, dtype=_acc_dtype(xs[0].dtype), device=xs[0].device)
    _launch(_sumsq_kernel, list(xs), list(ys), groups, lead, out)
    return out.sqrt_().view(*shape, groups)


def _grads_torch(xs, ys, coef: Tensor, groups: int, lead: int) -> list[Tensor]:
    """``(x - y) * coef[g]`` with torch ops: differentiable and usable on functorch tensors."""
    per_group = len(xs) // groups
    out = []
    for t, x in enumerate(xs):
        d = x.to(coef.dtype) - ys[t].to(coef.dtype) if ys else x.to(coef.dtype)
        c = coef[..., t // per_group].reshape(*coef.shape[:lead], *([1] * (x.dim() - lead)))
        out.append((d * c).to(x.dtype))
    return out


class GroupNormsFn(torch.autograd.Function):
    """``apply(groups, lead, n_x, *xs, *ys)`` -> norms ``[*lead_shape, groups]`` (fp32/fp64).

    ``lead`` counts the leading batch dims every tensor carries; the ``vmap`` staticmethod adds
    one per vmap level, so a vmapped call is still a single launch over the whole meta-batch.
    """

    @staticmethod
    def forward(groups: int, lead: int, n_x: int, *tensors: Tensor) -> Tensor:
        return _norms(tensors[:n_x], tensors[n_x:], groups, lead)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        groups, lead, n_x, *tensors = inputs
        ctx.save_for_backward(output, *tensors)
        ctx.groups, ctx.lead, ctx.n_x = groups, lead, n_x

    @staticmethod
    def backward(ctx, grad: Tensor):
        out, *tensors = ctx.saved_tensors
        n_x, groups, lead = ctx.n_x, ctx.groups, ctx.lead
        xs, ys = tensors[:n_x], tensors[n_x:]
        positive = out > 0
        coef = torch.where(positive, grad / torch.where(positive, out, 1), 0)
        want_gy = any(ctx.needs_input_grad[3 + n_x:])
        if torch.is_grad_enabled() or any(map(_is_wrapped, (grad, out, *tensors))):
            gxs = _grads_torch(xs, ys, coef, groups, lead)
            gys = [-g for g in gxs] if want_gy else []
        else:
            gxs = [torch.empty_like(x, memory_format=torch.contiguous_format) for x in xs]
            gys = [torch.empty_like(y, memory_format=torch.contiguous_format)
                   for y in ys] if want_gy else []
            _launch(_scale_kernel, list(xs), list(ys), groups, lead, coef.contiguous(),
                    grads=(gxs, gys or [0] * n_x), WRITE_GY=want_gy)
        return None, None, None, *gxs, *(gys or [None] * len(ys))

    @staticmethod
    def vmap(info, in_dims, groups: int, lead: int, n_x: int, *tensors: Tensor):
        moved = [t.movedim(d, 0) if d is not None else t.expand(info.batch_size, *t.shape)
                 for t, d in zip(tensors, in_dims[3:], strict=True)]
        return GroupNormsFn.apply(groups, lead + 1, n_x, *moved), 0


def _is_wrapped(t: Tensor) -> bool:
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def group_norms_triton(xs: list[Tensor], ys: list[Tensor], groups: int) -> Tensor:
    """The fused Triton path of :func:`engine.kernels.group_norms` (inputs already validated)."""
    return GroupNormsFn.apply(groups, 0, len(xs), *xs, *ys).to(xs[0].dtype)
