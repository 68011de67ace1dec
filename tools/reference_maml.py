#!/usr/bin/env python
"""A minimal MAML, independent of the framework's engine: the yardstick that the framework's
MAML and FOMAML are compared with in ``docs/results_builtin.md``.

    python tools/reference_maml.py --config-file configs/maml_5shot.yaml --output-dir OUT \\
        seed=0 model.backbone.hidden=32 solver.max_iter=500

Everything that trains and tests is written here in plain PyTorch, the way a first MAML is
written: stock ``torch.nn`` layers (Conv2d with bias, BatchNorm2d without running statistics,
ReLU, MaxPool2d, Linear, default initialisation), ``torch.func.functional_call`` and
``torch.autograd.grad(create_graph=True)`` one task at a time (``create_graph=False``, i.e.
first-order MAML, when the config sets ``algorithm.first_order`` as the FOMAML configs do), its own episodic sampler (a numpy
``Generator``) and its own evaluation (adapt, then query accuracy, mean ± 95% CI). From the
framework it takes only the numbers of the config file (way, shot, query, inner lr and steps,
meta-batch, Adam lr, iterations, test tasks, seed, first order or not) and the images of the
dataset's cache, so both train on the same pixels. It writes ``config.yaml`` (with
``algorithm.name: reference_maml`` or ``reference_fomaml``, so ``tools/make_table.py`` gives it
its own row), ``metrics.jsonl``
(``val/acc`` every ``test.eval_period``) and ``results.json`` (``test_acc``, ``test_ci95``,
``wall_time_s``).
A folder that already holds ``results.json`` is left alone; one without starts over. The
study's sweep runs it through ``configs/tables/builtin_reference.yaml`` (``trainer:
reference_maml``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call

import lil_meta.models  # noqa: F401  (the built-in algorithms register: the config names one)
from lil_meta.datasets import build_dataset
from lil_meta.engine.config import load_config
from lil_meta.engine.errors import UserInputError


def conv4(in_channels: int, hidden: int, way: int, image_size: int) -> nn.Sequential:
    """4 × [conv3×3, BatchNorm (batch statistics), ReLU, max-pool 2], flatten, linear."""
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1),
                   nn.BatchNorm2d(hidden, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2)]
    side = image_size
    for _ in range(4):
        side //= 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(hidden * side * side, way))


class Episodes:
    """N-way K-shot tasks from one split: ``images`` uint8 ``[n, C, H, W]``, ``labels`` ``[n]``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, way: int, shot: int, query: int):
        self.images, self.way, self.shot, self.query = images, way, shot, query
        labels = labels.numpy()
        self.by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]

    def sample(self, rng: np.random.Generator):
        classes = rng.choice(len(self.by_class), self.way, replace=False)
        support, query = [], []
        for c in classes:
            idx = rng.choice(self.by_class[c], self.shot + self.query, replace=False)
            support.append(idx[:self.shot])
            query.append(idx[self.shot:])
        x = lambda idx: self.images[torch.from_numpy(np.concatenate(idx))].float() / 255.0  # noqa: E731
        y = lambda n: torch.arange(self.way).repeat_interleave(n)  # noqa: E731
        return x(support), y(self.shot), x(query), y(self.query)


def adapt(model: nn.Module, sx, sy, lr: float, steps: int, create_graph: bool,
          params: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``steps`` SGD steps of rate ``lr`` on the support set from ``params`` (default: the
    model's own), each gradient kept in the graph with ``create_graph`` (second order). The one
    plain MAML of the project's reference code: this trainer, the benchmark's naive row
    (``tools/bench_rows.py``) and ``benchmarks/check_compile.py`` run it."""
    params = dict(model.named_parameters()) if params is None else params
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(model, params, (sx,)), sy)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        params = {name: p - lr * g for (name, p), g in zip(params.items(), grads, strict=True)}
    return params


def evaluate(model: nn.Module, episodes: Episodes, tasks: int, seed: int, lr: float, steps: int):
    """Mean query accuracy (%) after adaptation over ``tasks`` tasks, and its 95% CI."""
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(tasks):
        sx, sy, qx, qy = episodes.sample(rng)
        params = adapt(model, sx, sy, lr, steps, create_graph=False)
        with torch.no_grad():
            accs.append((functional_call(model, params, (qx,)).argmax(-1) == qy).float().mean().item())
    accs = np.array(accs) * 100
    return float(accs.mean()), float(1.96 * accs.std(ddof=1) / math.sqrt(len(accs)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--resume", action="store_true",
                   help="accepted so that tools/sweep.py can run it; this trainer keeps no checkpoints, "
                        "so an unfinished run starts over")
    p.add_argument("opts", nargs="*", help="config overrides, key=value")
    args = p.parse_args(argv)
    began = time.perf_counter()
    try:
        cfg = load_config(args.config_file, args.opts)
        dataset = build_dataset(cfg.data)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    if (out / "results.json").is_file():
        print(f"{out}: finished already")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    d, a, s = cfg.data, cfg.algorithm, cfg.solver
    first_order = bool(cfg.algorithm.get("first_order", False))  # the fomaml configs set it
    name = "reference_fomaml" if first_order else "reference_maml"
    OmegaConf.save(OmegaConf.merge(cfg, {"algorithm": {"name": name}}), out / "config.yaml")

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    split = lambda name: Episodes(dataset.split(name).images, dataset.split(name).labels,  # noqa: E731
                                  d.way, d.shot, d.query)
    train, val, test = split("train"), split("val"), split("test")
    model = conv4(d.channels, int(cfg.model.backbone.get("hidden", 64)), d.way, d.image_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    steps, steps_test, lr = int(a.inner_steps), int(a.inner_steps_test), float(a.inner_lr)
    start = time.perf_counter()
    with open(out / "metrics.jsonl", "w") as log:
        for it in range(1, s.max_iter + 1):
            optimizer.zero_grad()
            for _ in range(s.meta_batch):
                sx, sy, qx, qy = train.sample(rng)
                params = adapt(model, sx, sy, lr, steps, create_graph=not first_order)
                (F.cross_entropy(functional_call(model, params, (qx,)), qy) / s.meta_batch).backward()
            optimizer.step()
            if it % cfg.test.eval_period == 0 or it == s.max_iter:
                acc, ci = evaluate(model, val, cfg.test.val_tasks, cfg.test.seed, lr, steps_test)
                log.write(json.dumps({"iter": it, "val/acc": acc, "val/ci95": ci}) + "\n")
                log.flush()
                print(f"iter {it}/{s.max_iter}  val/acc {acc:.2f} ± {ci:.2f}", flush=True)
    acc, ci = evaluate(model, test, cfg.test.tasks, cfg.test.seed, lr, steps_test)
    results = {"test_acc": acc, "test_ci95": ci, "seed": int(cfg.seed), "iterations": int(s.max_iter),
               "train_seconds": round(time.perf_counter() - start, 1),
               "wall_time_s": time.perf_counter() - began}  # as train_net.py's: build, train, test
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"test accuracy: {acc:.2f} ± {ci:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
