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

from engine.checkpoint import get_rng_state, set_rng_state

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


def evaluate(algorithm: torch.nn.Module, task_list, batch_size: int, device: torch.device | str,
             desc: str = "eval") -> dict[str, float]:
    """Accuracy of ``algorithm`` over every task of ``task_list``: ``{"acc", "ci95", "n"}``, and
    ``acc_init``/``ci95_init`` (θ⁰ without adaptation) when the algorithm reports ``task_acc_init``.

    Accuracies and CIs are in percent (``task_acc`` of the algorithm's output is a fraction).
    The algorithm runs in ``eval()`` mode (test-time inner steps) under ``torch.no_grad()``;
    its previous mode is restored afterwards. The global RNG state (torch, CUDA, numpy, Python)
    is saved and restored around the evaluation, so evaluating mid-training does not shift the
    training stream and a resumed run stays bit-identical to an uninterrupted one.
    """
    was_training = algorithm.training
    rng = get_rng_state()
    accs, accs_init = [], []
    try:
        algorithm.eval()
        with torch.no_grad():
            for batch in tqdm(task_list.batches(batch_size), desc=desc, leave=False, unit="batch",
                              total=math.ceil(len(task_list) / batch_size), dynamic_ncols=True,
                              disable=None):
                out = algorithm(batch.to(device))
                accs.append(out["task_acc"].detach().double().flatten().cpu())
                if "task_acc_init" in out:
                    accs_init.append(out["task_acc_init"].detach().double().flatten().cpu())
    finally:
        algorithm.train(was_training)
        set_rng_state(rng)
    values = torch.cat(accs) * 100.0
    mean, ci = mean_ci95(values)
    result = {"acc": mean, "ci95": ci, "n": int(values.numel())}
    if len(accs_init) == len(accs):
        result["acc_init"], result["ci95_init"] = mean_ci95(torch.cat(accs_init) * 100.0)
    return result
