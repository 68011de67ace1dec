"""``group_norms``: the torch path against a naive reference, its transforms and its errors; the
Triton path against the torch path under ``TRITON_INTERPRET=1`` in a subprocess (see
``triton_interp_checks.py``), so the interpreter never leaks into the rest of the suite."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.func import vmap

from lil_meta.engine.kernels import group_norms

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SHAPES = [(1,), (7,), (10, 100), (4099,), (2, 3, 4)]


def rand(groups: int, lead: tuple[int, ...] = (), shapes=SHAPES, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*lead, *s, generator=gen, dtype=dtype).requires_grad_()
            for _ in range(groups) for s in shapes]


def naive(xs, ys, groups: int) -> torch.Tensor:
    per_group = len(xs) // groups
    out = []
    for g in range(groups):
        diffs = [(xs[t].double() - (ys[t].double() if ys else 0)).flatten()
                 for t in range(g * per_group, (g + 1) * per_group)]
        out.append(torch.cat(diffs).pow(2).sum().sqrt())
    return torch.stack(out)


@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("with_ys", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_path_matches_naive(groups, with_ys, dtype):
    xs = rand(groups, dtype=dtype, seed=1)
    ys = rand(groups, dtype=dtype, seed=2) if with_ys else []
    out = group_norms(xs, ys, groups)
    assert out.shape == (groups,) and out.dtype == dtype
    torch.testing.assert_close(out.double(), naive(xs, ys, groups).detach(),
                               rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


@pytest.mark.parametrize("with_ys", [True, False])
def test_torch_path_gradcheck(with_ys):
    shapes = [(1,), (7,), (2, 3)]
    xs = rand(2, shapes=shapes, seed=3)
    ys = rand(2, shapes=shapes, seed=4) if with_ys else []
    fn = lambda *t: group_norms(t[:6], t[6:], 2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(xs + ys))
    assert torch.autograd.gradgradcheck(fn, tuple(xs + ys))


def test_vmap_equals_loop_values_and_grads():
    xs, ys, y0 = rand(3, (4,), seed=5), rand(3, (4,), seed=6), rand(3, seed=7)

    def both(mapped: bool, ys_batched: bool):
        ys_ = ys if ys_batched else y0
        if mapped:
            fn = vmap(lambda a, b: group_norms(a, b, 3), in_dims=(0, 0 if ys_batched else None))
            out = fn(xs, ys_)
        else:
            out = torch.stack([group_norms([x[i] for x in xs],
                                           [y[i] if ys_batched else y for y in ys_], 3)
                               for i in range(4)])
        return out.detach(), torch.autograd.grad(out.sum(), xs + ys_)

    for ys_batched in (True, False):
        (o_m, g_m), (o_l, g_l) = both(True, ys_batched), both(False, ys_batched)
        assert o_m.shape == (4, 3)
        torch.testing.assert_close(o_m, o_l)
        torch.testing.assert_close(g_m, g_l)


def test_zero_norm_gives_finite_zero_gradient():
    xs = rand(2, shapes=[(7,), (3, 2)], seed=8)
    ys = [x.detach().clone().requires_grad_() for x in xs[:2]] + rand(1, shapes=[(7,), (3, 2)])
    out = group_norms(xs, ys, 2)
    assert out[0].item() == 0.0
    grads = torch.autograd.grad(out.sum(), xs + ys)
    assert all(torch.isfinite(g).all() for g in grads)
    assert all((g == 0).all() for g in grads[:2] + grads[4:6])
    plain = torch.zeros(5, requires_grad=True)
    (g,) = torch.autograd.grad(group_norms([plain], [], 1).sum(), plain)
    assert torch.equal(g, torch.zeros(5))


def test_noncontiguous_and_half_precision():
    base = rand(1, shapes=[(6, 9)], dtype=torch.float32)
    xs = [base[0].detach().t()]
    assert not xs[0].is_contiguous()
    torch.testing.assert_close(group_norms(xs, [], 1), base[0].detach().norm().view(1))
    for dtype in (torch.bfloat16, torch.float16):
        half = [x.to(dtype) for x in xs]
        out = group_norms(half, [], 1)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), naive(half, [], 1).float(), rtol=1e-2, atol=0)


@pytest.mark.parametrize("bad", [
    dict(ys="short"), dict(ys="shape"), dict(groups=3), dict(groups=0), dict(xs="empty"),
    dict(xs="dtype"), dict(backend="cuda"),
])
def test_bad_inputs_raise_value_error(bad):
    xs = [torch.ones(3), torch.ones(2, 2), torch.ones(3), torch.ones(2, 2)]
    ys = {"short": xs[:2], "shape": [torch.ones(3), torch.ones(4), torch.ones(3), torch.ones(2, 2)]}
    kwargs = dict(xs=xs, ys=ys.get(bad.get("ys"), []), groups=bad.get("groups", 2),
                  backend=bad.get("backend", "auto"))
    if bad.get("xs") == "empty":
        kwargs["xs"] = []
    if bad.get("xs") == "dtype":
        kwargs["xs"] = xs[:3] + [xs[3].double()]
    with pytest.raises(ValueError, match="group_norms"):
        group_norms(**kwargs)


def test_fp32_accumulation_stays_accurate_on_large_tensors():
    x = torch.randn(3_000_000, generator=torch.Generator().manual_seed(9)) + 0.3
    out = group_norms([x, x[:5]], [], 1)
    ref = torch.cat([x, x[:5]]).double().square().sum().sqrt()
    assert abs(out.item() - ref.item()) / ref.item() < 1e-6


def test_triton_backend_on_cpu_needs_interpreter():
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter is on in this process")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        group_norms([torch.ones(3)], [], 1, backend="triton")


@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
@pytest.mark.parametrize("kernel", ["_sumsq_kernel", "_scale_kernel"])
def test_kernels_compile_for_sm90_with_vector_loads(kernel):
    """GPU codegen without a GPU: the pointer-table casts compile, full chunks vectorize."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter is on in this process")
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lil_meta.engine.kernels import triton_group_norms as tgn

    fn = getattr(tgn, kernel)
    consts = {"HAS_Y": True, "WRITE_GY": True, "DT": tl.float32, "ACC": tl.float32,
              "BLOCK": tgn.BLOCK, "ITERS": tgn.ITERS}
    names = fn.arg_names
    sig = {k: "constexpr" if k in consts else ("i32" if k.startswith("n_") else
           ("*i64" if k in ("shape", "ptrs", "blocks") else "*fp32")) for k in names}
    src = ASTSource(fn=fn, signature=sig,
                    constexprs={(i,): consts[k] for i, k in enumerate(names) if k in consts})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    assert "ld.global.v4" in ptx
    assert ("atom.global" in ptx or "red.global" in ptx) == (kernel == "_sumsq_kernel")


def test_cpu_auto_backend_is_torch():
    from lil_meta.engine.kernels.group_norms import _triton_usable

    assert not _triton_usable(torch.ones(1))


def _interp_check_names() -> list[str]:
    spec = importlib.util.spec_from_file_location("triton_interp_checks",
                                                  os.path.join(HERE, "triton_interp_checks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.CHECKS)


@pytest.fixture(scope="module")
def interp_reports() -> tuple[dict[str, dict], str]:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "triton_interp_checks.py")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    reports = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
            reports[report["check"]] = report
    return reports, f"exit {proc.returncode}; stderr tail:\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("name", _interp_check_names())
def test_triton_path_under_interpreter(interp_reports, name):
    reports, log = interp_reports
    assert name in reports, f"check {name} did not run ({log})"
    assert reports[name]["ok"], reports[name].get("error")
