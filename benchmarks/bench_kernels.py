"""Time the trajectory-norm op ``group_norms``: fused Triton path vs torch path (vs concatenation).

Each case is forward + backward of the inner loop's norms under ``torch.func.vmap`` over ``B``
tasks with ``S`` steps, on Conv4- and ResNet-12-shaped parameter lists: the step norms
``group_norms(flat(θ¹..θˢ), flat(θ⁰..θˢ⁻¹), S)`` (θ⁰ shared by all tasks, the rest per task) and
the gradient norms ``group_norms(flat(g⁰..gˢ), [], S+1)``. ``cat`` is the alternative layout
(flatten and concatenate every tensor, then one reduction), to show what the copy costs. One JSON
line per case: ms per call (CUDA events after warm-up), ratios, and the largest difference of
outputs and gradients from the torch path.

    python benchmarks/bench_kernels.py                  # CUDA: torch, cat, triton
    python benchmarks/bench_kernels.py --device cpu     # torch and cat only
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch.func import vmap

from lil_meta.engine.kernels import group_norms


def conv4_shapes(way: int = 5) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    for c_in in (3, 64, 64, 64):
        shapes += [(64, c_in, 3, 3), (64,), (64,), (64,)]
    return shapes + [(way, 1600), (way,)]


def resnet12_shapes(way: int = 5) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    c_in = 3
    for c in (64, 160, 320, 640):
        for k_in in (c_in, c, c):
            shapes += [(c, k_in, 3, 3), (c,), (c,)]
        shapes += [(c, c_in, 1, 1), (c,), (c,)]
        c_in = c
    return shapes + [(way, 640), (way,)]


def cat_norms(xs, ys, groups: int) -> torch.Tensor:
    """The concatenation layout: one flat fp32 buffer per group, then one norm each."""
    per = len(xs) // groups
    diffs = [x.float() - y.float() for x, y in zip(xs, ys, strict=True)] if ys else [x.float() for x in xs]
    flat = [torch.cat([d.reshape(-1) for d in diffs[g * per:(g + 1) * per]]) for g in range(groups)]
    return torch.stack(flat).square().sum(1).sqrt().to(xs[0].dtype)


def make_case(kind: str, shapes, batch: int, steps: int, device, dtype):
    """Leaves and a ``run(backend) -> out`` closure for the ``steps`` or ``grads`` case."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=gen).to(device, dtype).requires_grad_()  # noqa: E731
    if kind == "steps":
        theta0 = [rand(*s) for s in shapes]
        later = [rand(batch, *s) for _ in range(steps) for s in shapes]
        xs, ys = later, theta0 + later[: (steps - 1) * len(shapes)]
        dims = ([0] * len(xs), [None] * len(shapes) + [0] * (len(ys) - len(shapes)))
        leaves, groups = theta0 + later, steps
    else:
        xs, ys = [rand(batch, *s) for _ in range(steps + 1) for s in shapes], []
        dims, leaves, groups = ([0] * len(xs), []), xs, steps + 1

    def run(backend: str) -> torch.Tensor:
        fn = cat_norms if backend == "cat" else (
            lambda a, b, g: group_norms(a, b, g, backend=backend))
        return vmap(lambda a, b: fn(a, b, groups), in_dims=dims)(xs, ys)

    return leaves, run


def time_ms(fn, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1e3 / iters


def bench(model: str, kind: str, args, device: torch.device, backends: list[str]) -> dict:
    shapes = {"conv4": conv4_shapes, "resnet12": resnet12_shapes}[model]()
    dtype = getattr(torch, args.dtype)
    leaves, run = make_case(kind, shapes, args.batch, args.steps, device, dtype)
    weights = None

    def fwd_bwd(backend: str):
        nonlocal weights
        out = run(backend)
        if weights is None:
            weights = torch.linspace(0.5, 1.5, out.numel(), device=device).view_as(out).to(dtype)
        return out, torch.autograd.grad((out * weights).sum(), leaves)

    record = {"case": f"{model}/{kind}", "device": str(device), "dtype": args.dtype,
              "tensors": len(shapes), "params": sum(torch.Size(s).numel() for s in shapes),
              "batch": args.batch, "steps": args.steps}
    ref_out, ref_grads = fwd_bwd("torch")
    for backend in backends:
        out, grads = fwd_bwd(backend)
        record[f"{backend}_max_abs_diff_out"] = (out - ref_out).abs().max().item()
        record[f"{backend}_max_rel_diff_out"] = ((out - ref_out).abs() / ref_out.abs()).max().item()
        record[f"{backend}_max_abs_diff_grad"] = max((a - b).abs().max().item()
                                                     for a, b in zip(grads, ref_grads, strict=True))
        record[f"{backend}_fwd_ms"] = time_ms(lambda b=backend: run(b), device, args.warmup, args.iters)
        record[f"{backend}_fwd_bwd_ms"] = time_ms(lambda b=backend: fwd_bwd(b), device,
                                                  args.warmup, args.iters)
    for backend in backends:
        if backend != "torch":
            record[f"torch_over_{backend}"] = record["torch_fwd_bwd_ms"] / record[f"{backend}_fwd_bwd_ms"]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["conv4", "resnet12"])
    parser.add_argument("--kinds", nargs="+", default=["steps", "grads"])
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: torch cat triton on CUDA, torch cat elsewhere")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    backends = args.backends or (["torch", "cat", "triton"] if device.type == "cuda" else ["torch", "cat"])
    for model in args.models:
        for kind in args.kinds:
            print(json.dumps(bench(model, kind, args, device, backends)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
