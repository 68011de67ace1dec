"""Checks of the Triton path of ``group_norms`` against the torch path, run under the interpreter.

``TRITON_INTERPRET=1`` must be set before triton is imported, so ``test_group_norms.py`` runs
this file in a subprocess (``python triton_interp_checks.py``) and reads one JSON line per check.
Tensors are small: the interpreter runs every program in Python.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable

import torch
from torch.func import grad, vmap

from lil_meta.engine.kernels import group_norms

SHAPES = [(1,), (7,), (10, 100), (4099,), (4, 1024), (3, 5)]  # CHUNK = 4096
CHECKS: dict[str, Callable[[], None]] = {}


def check(fn: Callable[[], None]) -> Callable[[], None]:
    CHECKS[fn.__name__] = fn
    return fn


def rand(groups: int, lead: tuple[int, ...] = (), shapes=SHAPES, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*lead, *s, generator=gen, dtype=dtype).requires_grad_()
            for _ in range(groups) for s in shapes]


def compare(fn, tensors: list[torch.Tensor], atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """Run ``fn(backend)`` for both backends; compare outputs and gradients of a weighted sum."""
    results = []
    for backend in ("triton", "torch"):
        out = fn(backend)
        weights = torch.linspace(-1.0, 2.0, out.numel()).view_as(out).to(out.dtype)
        grads = torch.autograd.grad((out * weights).sum(), tensors, allow_unused=True)
        results.append((out.detach(), grads))
    (out_t, g_t), (out_r, g_r) = results
    assert out_t.dtype == out_r.dtype and out_t.shape == out_r.shape, (out_t.shape, out_r.shape)
    torch.testing.assert_close(out_t, out_r, atol=atol, rtol=rtol)
    for a, b in zip(g_t, g_r, strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


@check
def plain_with_and_without_ys() -> None:
    for groups in (1, 3):
        xs, ys = rand(groups, seed=1), rand(groups, seed=2)
        compare(lambda be, xs=xs, ys=ys, g=groups: group_norms(xs, ys, g, backend=be), xs + ys)
        compare(lambda be, xs=xs, g=groups: group_norms(xs, [], g, backend=be), xs)


@check
def vmap_batched_and_broadcast() -> None:
    xs, ys, y0 = rand(2, (3,), seed=3), rand(2, (3,), seed=4), rand(2, seed=5)
    compare(lambda be: vmap(lambda a, b: group_norms(a, b, 2, backend=be))(xs, ys), xs + ys)
    compare(lambda be: vmap(lambda a, b: group_norms(a, b, 2, backend=be),
                            in_dims=(0, None))(xs, y0), xs + y0)
    compare(lambda be: vmap(lambda a: group_norms(a, [], 2, backend=be))(xs), xs)
    moved = [x.movedim(0, -1) for x in xs]
    compare(lambda be: vmap(lambda a: group_norms(a, [], 2, backend=be), in_dims=-1)(moved), xs)


@check
def vmap_equals_loop() -> None:
    xs, ys = rand(3, (3,), seed=6), rand(3, (3,), seed=7)
    mapped = vmap(lambda a, b: group_norms(a, b, 3, backend="triton"))(xs, ys)
    looped = torch.stack([group_norms([x[i] for x in xs], [y[i] for y in ys], 3, backend="triton")
                          for i in range(3)])
    torch.testing.assert_close(mapped, looped, atol=1e-5, rtol=1e-5)


@check
def one_launch_each_way_under_vmap() -> None:
    from lil_meta.engine.kernels import triton_group_norms as tgn

    calls: list[str] = []
    original = tgn._launch

    def counting(kernel, *args, **kwargs):
        calls.append(kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel))
        return original(kernel, *args, **kwargs)

    tgn._launch = counting
    try:
        xs, ys = rand(3, (3,), seed=8), rand(3, (3,), seed=9)
        out = vmap(lambda a, b: group_norms(a, b, 3, backend="triton"))(xs, ys)
        assert len(calls) == 1, calls
        out.sum().backward()
        assert len(calls) == 2, calls
    finally:
        tgn._launch = original


@check
def only_some_inputs_need_grad() -> None:
    xs, ys = rand(2, seed=21), [t.detach() for t in rand(2, seed=22)]
    compare(lambda be: group_norms(xs, ys, 2, backend=be), xs)
    xs, ys = [t.detach() for t in xs], rand(2, seed=23)
    ys[0] = ys[0].detach()
    compare(lambda be: group_norms(xs, ys, 2, backend=be), ys[1:])


@check
def noncontiguous_inputs() -> None:
    base = rand(2, shapes=[(6, 9), (5, 4, 3)], seed=10)
    xs = [t.transpose(0, -1) for t in base]
    ys = [t[..., ::2] for t in rand(2, shapes=[(9, 12), (3, 4, 10)], seed=11)]
    assert not any(t.is_contiguous() for t in xs + ys)
    compare(lambda be: group_norms(xs, ys, 2, backend=be), base + ys)


@check
def half_precision_accumulates_in_fp32() -> None:
    for dtype in (torch.bfloat16, torch.float16):
        xs = [t.detach().to(dtype).requires_grad_() for t in rand(2, seed=12)]
        out = group_norms(xs, [], 2, backend="triton")
        assert out.dtype == dtype
        ref = group_norms([x.detach().float() for x in xs], [], 2, backend="torch")
        torch.testing.assert_close(out.float(), ref, atol=0, rtol=1e-2)
        compare(lambda be, xs=xs: group_norms(xs, [], 2, backend=be), xs, atol=1e-2, rtol=1e-2)


@check
def zero_norm_gives_zero_gradient() -> None:
    xs = rand(2, shapes=[(7,), (3, 5)], seed=13)
    ys = [x.detach().clone().requires_grad_() for x in xs]
    ys[2:] = [torch.zeros_like(x, requires_grad=True) for x in xs[2:]]
    out = group_norms(xs, ys, 2, backend="triton")
    assert out[0].item() == 0.0 and out[1].item() > 0
    grads = torch.autograd.grad(out.sum(), xs + ys)
    assert all(torch.isfinite(g).all() for g in grads)
    assert all((g == 0).all() for g in grads[:2] + grads[4:6])
    compare(lambda be: group_norms(xs, ys, 2, backend=be), xs + ys)


@check
def fp64_gradcheck() -> None:
    xs = rand(2, shapes=[(3,), (2, 2)], dtype=torch.float64, seed=14)
    ys = rand(2, shapes=[(3,), (2, 2)], dtype=torch.float64, seed=15)
    fn = lambda *t: group_norms(t[:4], t[4:], 2, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(xs + ys))


@check
def called_inside_func_grad() -> None:
    xs = [t.detach() for t in rand(2, seed=16)]
    batched = [t.detach() for t in rand(2, (3,), seed=24)]
    captured = rand(2, seed=25)
    scale = torch.tensor(2.0)

    def run(be: str):
        direct = grad(lambda a: group_norms(a, [], 2, backend=be).sum())(xs)
        mapped = vmap(grad(lambda a: group_norms(a, [], 2, backend=be).sum()))(batched)
        side = grad(lambda s: s * group_norms(captured, [], 2, backend=be).sum())(scale)
        return direct, mapped, side

    torch.testing.assert_close(run("triton"), run("torch"), atol=1e-5, rtol=1e-5)


@check
def double_backward_via_torch_ops() -> None:
    xs, ys = rand(2, shapes=[(7,), (3, 5)], seed=17), rand(2, shapes=[(7,), (3, 5)], seed=18)

    def second(be: str):
        out = group_norms(xs, ys, 2, backend=be)
        g = torch.autograd.grad((out * torch.tensor([1.0, -2.0])).sum(), xs, create_graph=True)
        return torch.autograd.grad(sum((t * t).sum() for t in g), xs + ys)

    for a, b in zip(second("triton"), second("torch"), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@check
def second_order_maml_under_vmap() -> None:
    """θ⁰ shared, per-task inner steps with ``torch.func.grad``; norms feed the outer loss."""
    gen = torch.Generator().manual_seed(19)
    theta0 = [torch.randn(5, 3, generator=gen, requires_grad=True),
              torch.randn(3, generator=gen, requires_grad=True)]
    data = torch.randn(4, 6, 5, generator=gen)

    def task(backend: str, w, b, x):
        loss = lambda p: ((x @ p[0] + p[1]).tanh() ** 2).mean()  # noqa: E731
        thetas, grads = [[w, b]], []
        for _ in range(2):
            g = grad(loss)(thetas[-1])
            grads.append(g)
            thetas.append([p - 0.5 * gp for p, gp in zip(thetas[-1], g, strict=True)])
        steps = group_norms([p for th in thetas[1:] for p in th],
                            [p for th in thetas[:-1] for p in th], 2, backend=backend)
        gnorms = group_norms([p for g in grads for p in g], [], 2, backend=backend)
        return steps.sum() + 0.1 * gnorms[1] / gnorms[0]

    outs = {}
    for be in ("triton", "torch"):
        total = vmap(lambda x, be=be: task(be, *theta0, x))(data).sum()
        outs[be] = (total.detach(), torch.autograd.grad(total, theta0))
        looped = sum(task(be, *theta0, data[i]) for i in range(4))
        torch.testing.assert_close(outs[be][0], looped.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["triton"], outs["torch"], atol=1e-5, rtol=1e-5)


@check
def nested_vmap_and_empty_tensors() -> None:
    xs = rand(2, (2, 3), shapes=[(7,), (4, 2)], seed=20)
    compare(lambda be: vmap(vmap(lambda a: group_norms(a, [], 2, backend=be)))(xs), xs)
    xs = rand(2, (3,), shapes=[(0,), (5,)], seed=26)
    compare(lambda be: vmap(lambda a: group_norms(a, [], 2, backend=be))(xs), xs)
    empty = rand(1, shapes=[(0, 4)], seed=27)
    compare(lambda be: group_norms(empty, [], 1, backend=be), empty)


def main(names: list[str]) -> int:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    failed = 0
    for name in names or list(CHECKS):
        try:
            CHECKS[name]()
            report = {"check": name, "ok": True}
        except Exception:  # noqa: BLE001 - report every failure, keep running the others
            failed += 1
            report = {"check": name, "ok": False, "error": traceback.format_exc()}
        print(json.dumps(report), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
