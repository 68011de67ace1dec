#!/usr/bin/env python
"""Does ``torch.compile`` handle a MAML meta-gradient here? First and second order, one line each.

    python benchmarks/check_compile.py --config-file configs/maml_1shot.yaml [--orders first second] [key=value ...]

For each order it compiles the loss of one task — S inner steps by ``torch.autograd.grad``
(``create_graph`` for second order), then the query loss — on the config's network and a
synthetic task of the configured shape, and differentiates it with respect to θ⁰. It prints
whether that ran, the largest relative difference to the eager meta-gradient, and (when it ran)
the median time of three eager and three compiled meta-gradients. ``--dtype float64`` gives a
difference free of float32 round-off (the meta-gradient of a random 84×84 task is badly
conditioned). For second order, AOTAutograd's donated buffers (an optimization that rules out
``create_graph`` by design) are turned off first, so the error shown is the remaining one. The
engine does not compile anything; this tool records where compiling would be possible
(``docs/performance.md``). ``--backend aot_eager`` stops after AOTAutograd, the stage that refuses
second order, without generating and building C++ kernels (inductor, the default): the same
finding in seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call

from lil_meta.engine.config import load_config
from lil_meta.engine.errors import UserInputError
from lil_meta.models import build_backbone
from lil_meta.tools.bench_rows import synthetic_batch
from lil_meta.tools.reference_maml import adapt


def meta_loss_fn(model, task, steps: int, lr: float):
    """One task's query loss after the reference MAML's inner loop, as a function of θ⁰."""
    names = [n for n, _ in model.named_parameters()]
    support_x, support_y, query_x, query_y = task

    def meta_loss(params: list[torch.Tensor], second_order: bool) -> torch.Tensor:
        theta = adapt(model, support_x, support_y, lr, steps, second_order, dict(zip(names, params, strict=True)))
        return F.cross_entropy(functional_call(model, theta, (query_x,)), query_y)

    return meta_loss


def check(meta_loss, params, second_order: bool, backend: str = "inductor") -> str:
    order = "second" if second_order else "first"
    eager = lambda: torch.autograd.grad(meta_loss(params, second_order), params)  # noqa: E731
    torch._dynamo.reset()
    compiled_loss = torch.compile(meta_loss, backend=backend)
    compiled = lambda: torch.autograd.grad(compiled_loss(params, second_order), params)  # noqa: E731
    reference = eager()
    donated = torch._functorch.config.donated_buffer
    torch._functorch.config.donated_buffer = donated and not second_order
    try:
        result = compiled()
    except Exception as exc:  # what torch.compile raises is the finding
        return f"{order} order: torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    finally:
        torch._functorch.config.donated_buffer = donated
    diff = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
               for a, b in zip(reference, result, strict=True))
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(3):
        for name, fn in (("eager", eager), ("compiled", compiled)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    e, c = (statistics.median(times[k]) for k in ("eager", "compiled"))
    return f"{order} order: ran; max relative difference to eager {diff:.1e}; eager {e:.3f} s, compiled {c:.3f} s"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--orders", nargs="+", choices=("first", "second"), default=["first", "second"])
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--backend", choices=("inductor", "aot_eager"), default="inductor",
                        help="torch.compile's backend (aot_eager: no code generation)")
    parser.add_argument("opts", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config_file, [*args.opts, "solver.meta_batch=1"])
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(cfg.seed)
    dtype = getattr(torch, args.dtype)
    model = build_backbone(cfg).to(dtype)
    task = [t[0].to(dtype) if t.is_floating_point() else t[0] for t in synthetic_batch(cfg, torch.device("cpu"))]
    meta_loss = meta_loss_fn(model, task, int(cfg.algorithm.inner_steps), float(cfg.algorithm.inner_lr))
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    print(f"torch {torch.__version__}, {cfg.model.backbone.name}, {cfg.data.image_size}px, "
          f"{cfg.data.way}-way {cfg.data.shot}-shot, {cfg.algorithm.inner_steps} inner steps, {args.dtype}, "
          f"backend {args.backend}")
    for order in args.orders:
        print(check(meta_loss, params, order == "second", args.backend), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
