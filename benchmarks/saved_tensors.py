#!/usr/bin/env python
"""What one task's second-order MAML graph keeps for the outer backward, by operation.

    python benchmarks/saved_tensors.py --config-file configs/maml_5shot.yaml [--higher] \\
        data.image_size=84 data.channels=3 [key=value ...]

Builds the config's algorithm on one synthetic task of the configured shape
(``tools/benchmark.py``'s batch), runs its forward at a training step that is not a logging
step (so without the diagnostics, which keep nothing), and walks the autograd graph of the
loss: every node, with the tensors it saved for its backward (``_saved_*`` of PyTorch's own
nodes, ``saved_tensors`` of a custom ``autograd.Function``). It prints, per node type, how
many tensors and how many bytes they hold (each storage counted once per type: a view of an
input and the input itself are one), and the total over the graph with every storage counted
once. ``--higher`` adds the same for the ``higher`` library's MAML on the same task and
weights (:mod:`tools.higher_reference`). The bytes a graph keeps until its backward are the
floor of the memory one task's step needs; the backward's own temporaries come on top.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import torch

from lil_meta.engine.config import load_config
from lil_meta.engine.errors import UserInputError
from lil_meta.models import build_algorithm
from lil_meta.tools.bench_rows import synthetic_batch
from lil_meta.tools.higher_reference import HigherMAML, import_higher, task_loss


def saved_tensors_of(node) -> list[torch.Tensor]:
    """The tensors ``node`` saved for its backward."""
    tensors = []
    if hasattr(node, "saved_tensors"):  # a custom autograd.Function's node is its ctx
        tensors += [t for t in node.saved_tensors if isinstance(t, torch.Tensor)]
    for name in dir(node):
        if not name.startswith("_saved_"):
            continue
        value = getattr(node, name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        tensors += [t for t in values if isinstance(t, torch.Tensor)]
    return tensors


def graph_nodes(loss: torch.Tensor):
    """Every node of the autograd graph behind ``loss``, once each."""
    seen, todo = set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        todo += [nxt for nxt, _ in node.next_functions]


def saved_by_op(loss: torch.Tensor) -> tuple[dict[str, tuple[int, int]], int]:
    """``({node type: (tensors, bytes)}, total bytes)`` of the graph behind ``loss``; bytes count
    each storage once per type and once in the total."""
    per_op: dict[str, dict[int, int]] = defaultdict(dict)
    counts: dict[str, int] = defaultdict(int)
    everything: dict[int, int] = {}
    for node in graph_nodes(loss):
        kind = type(node).__name__
        for t in saved_tensors_of(node):
            if t.numel() == 0:
                continue
            storage = t.untyped_storage()
            per_op[kind][storage.data_ptr()] = storage.nbytes()
            everything[storage.data_ptr()] = storage.nbytes()
            counts[kind] += 1
    table = {kind: (counts[kind], sum(sizes.values())) for kind, sizes in per_op.items()}
    return table, sum(everything.values())


def engine_loss(algo, batch) -> torch.Tensor:
    """The engine's loss on ``batch`` at training step 1 (not a logging step when
    ``metrics_period`` > 1), with its graph."""
    algo.train()
    return algo(batch, step=1)["loss"]


def higher_loss(algo, batch) -> torch.Tensor:
    """``higher``'s MAML loss of the first task, on a copy of ``algo``'s network with stock layers."""
    runner = argparse.Namespace(algo=algo, batch=batch, device=batch.query_x.device,
                                cfg=argparse.Namespace(solver=argparse.Namespace(lr=1e-3, meta_batch=1)))
    ref = HigherMAML(runner)
    return task_loss(ref.higher, ref.model, ref.lr, ref.steps, batch.support_x[0], batch.support_y[0],
                     batch.query_x[0], batch.query_y[0], ref.first_order)


def report(columns: dict[str, tuple[dict[str, tuple[int, int]], int]]) -> list[str]:
    """The table's lines: one row per node type, one column pair (tensors, MB) per graph."""
    names = list(columns)
    kinds = sorted({k for table, _ in columns.values() for k in table},
                   key=lambda k: -max(table.get(k, (0, 0))[1] for table, _ in columns.values()))
    head = f"{'node type':<40}" + "".join(f"{n:>26}" for n in names)
    lines = [head, f"{'':<40}" + "".join(f"{'tensors':>12}{'MB':>14}" for _ in names)]
    for kind in kinds:
        cells = [columns[n][0].get(kind, (0, 0)) for n in names]
        lines.append(f"{kind:<40}" + "".join(f"{c:>12}{b / 2**20:>14.1f}" for c, b in cells))
    lines.append(f"{'total (each storage once)':<40}" + "".join(f"{'':>12}{columns[n][1] / 2**20:>14.1f}"
                                                               for n in names))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--higher", action="store_true", help="also the higher library's MAML graph")
    parser.add_argument("opts", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config_file, [*args.opts, "solver.meta_batch=1"])
        if args.higher:
            import_higher()
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(cfg.seed)
    algo = build_algorithm(cfg)
    batch = synthetic_batch(cfg, torch.device("cpu"))
    columns = {"engine": saved_by_op(engine_loss(algo, batch))}
    if args.higher:
        columns["higher"] = saved_by_op(higher_loss(algo, batch))
    print("\n".join(report(columns)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
