"""Few-shot evaluation: mean query accuracy over a fixed list of tasks, with a 95% CI.

The protocol of the paper (and of the few-shot literature): adapt on each test task's support
set with the test-time inner loop, measure accuracy on its query set, report the mean over
tasks ± 1.96·σ/√n, σ the sample standard deviation over tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm import tqdm

from lil_meta.engine.launch import World, gather_lists
from lil_meta.engine.precision import Precision
from lil_meta.engine.rng import get_rng_state, set_rng_state

__all__ = ["evaluate", "mean_ci95"]


def mean_ci95(values: Sequence[float] | torch.Tensor) -> tuple[float, float]:
    """(mean, 95% CI half-width ``1.96 * std / sqrt(n)``) with the sample std (n - 1).

    The half-width is ``nan`` for a single value (no spread to estimate).
    """
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("mean_ci95: no values")
    if v.numel() == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(1.96 * v.std(unbiased=True) / math.sqrt(v.numel()))


def evaluate(algorithm: torch.nn.Module, task_list, batch_size: int, device: torch.device | str, *,
             desc: str = "eval", world: World | None = None, precision: Precision | None = None) -> dict[str, float]:
    """Accuracy of ``algorithm`` over every task of ``task_list``: ``{"acc", "ci95", "n"}``, and
    ``acc_init``/``ci95_init`` (θ⁰ without adaptation) when the algorithm reports ``task_acc_init``,
    likewise the kernel predictor's ``lin_acc``, ``lin_agree`` (percent) and ``lin_err``.

    Accuracies and CIs are in percent (``task_acc`` of the algorithm's output is a fraction).
    The algorithm runs in ``eval()`` mode (test-time inner steps) under ``torch.no_grad()``;
    its previous mode is restored afterwards. The global RNG state (torch, CUDA, numpy, Python)
    is saved and restored around the evaluation, so evaluating mid-training does not shift the
    training stream and a resumed run stays bit-identical to an uninterrupted one.

    With several processes (``world``), process r evaluates batches r, r + W, … and the per-task
    accuracies are gathered, in batch order, on every process: the result is the same as one
    process's. The forward passes run in the run's ``precision`` (:mod:`engine.precision`).
    """
    world = world or World()
    autocast = (precision or Precision()).autocast
    was_training = algorithm.training
    rng = get_rng_state()
    mine = []  # (batch index, {per-task key: values})
    try:
        algorithm.eval()
        with torch.no_grad():
            for i, batch in enumerate(tqdm(task_list.batches(batch_size), desc=desc, leave=False,
                                           unit="batch", total=math.ceil(len(task_list) / batch_size),
                                           dynamic_ncols=True, disable=None if world.is_main else True)):
                if i % world.size != world.rank:
                    continue
                with autocast():
                    out = algorithm(batch.to(device))
                mine.append((i, {key: out[f"task_{key}"].detach().double().flatten().cpu().tolist()
                                 for key in PER_TASK if f"task_{key}" in out}))
    finally:
        algorithm.train(was_training)
        set_rng_state(rng)
    gathered = [values for _, values in sorted(gather_lists(mine, world), key=lambda item: item[0])]
    result: dict[str, float] = {}
    for key, (name, ci_name, scale) in PER_TASK.items():
        if all(key in values for values in gathered):
            mean, ci = mean_ci95(torch.tensor([v for values in gathered for v in values[key]]) * scale)
            result[name], result[ci_name] = mean, ci
    result["n"] = sum(len(values["acc"]) for values in gathered)
    return result


#: the per-task outputs ``task_<key>`` an evaluation averages: (result key, its CI's key, scale)
PER_TASK = {
    "acc": ("acc", "ci95", 100.0),
    "acc_init": ("acc_init", "ci95_init", 100.0),
    "lin_acc": ("lin_acc", "ci95_lin_acc", 100.0),
    "lin_agree": ("lin_agree", "ci95_lin_agree", 100.0),
    "lin_err": ("lin_err", "ci95_lin_err", 1.0),
}
