"""The functional inner loop (DESIGN.md §1) and the mapping of one task's work over a meta-batch.

Parameters are plain ``{name: tensor}`` dicts evaluated with ``torch.func.functional_call``, so
the same per-task function runs either under ``torch.func.vmap`` (all tasks at once) or in a
Python loop over tasks (the reference path, and often the faster one on CPU).

Second-order MAML differentiates through every inner gradient ``gᵏ``: ``torch.func.grad``
returns tensors that stay connected to θ⁰ in the outer autograd graph. First-order variants
detach every ``gᵏ``, so ``∂θˢ/∂θ⁰ = I``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

Params = dict[str, torch.Tensor]
UpdateRule = Callable[[Params, Params, int], Params]

ENGINES = ("vmap", "loop")


def logits_at(model: nn.Module, adapted: Mapping[str, torch.Tensor], frozen: Mapping[str, torch.Tensor], x):
    """``f(x | θ)`` with θ assembled from the adapted and the held-fixed tensors."""
    return functional_call(model, {**frozen, **adapted}, (x,))


def support_loss(model: nn.Module, adapted: Params, frozen: Params, x, y) -> torch.Tensor:
    """Inner-loop objective: ``CE(f(xs|θ), ys)``."""
    return F.cross_entropy(logits_at(model, adapted, frozen, x), y)


def adapt(
    model: nn.Module,
    adapted: Params,
    frozen: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    steps: int,
    update: UpdateRule,
    first_order: bool,
) -> Params:
    """Run ``steps`` inner steps ``θᵏ⁺¹ = update(θᵏ, gᵏ, k)`` on one task; return θˢ."""
    support_grad = grad(lambda a, f, x, y: support_loss(model, a, f, x, y))
    for step in range(steps):
        grads = support_grad(adapted, frozen, support_x, support_y)
        if first_order:
            grads = {name: g.detach() for name, g in grads.items()}
        adapted = update(adapted, grads, step)
    return adapted


def map_tasks(fn: Callable[..., Any], shared: Sequence[Any], per_task: Sequence[torch.Tensor], engine: str):
    """Apply ``fn(*shared, *task_slices)`` to every task; stack the outputs along dim 0.

    ``engine="vmap"`` batches with ``torch.func.vmap``; ``"loop"`` calls ``fn`` once per task.
    Both return the same pytree of stacked tensors.
    """
    if engine == "vmap":
        in_dims = (None,) * len(shared) + (0,) * len(per_task)
        return vmap(fn, in_dims=in_dims, randomness="different")(*shared, *per_task)
    if engine != "loop":
        raise ValueError(f"algorithm.engine: expected one of {ENGINES} or 'auto', got '{engine}'")
    outputs = [fn(*shared, *(t[i] for t in per_task)) for i in range(per_task[0].shape[0])]
    return tree_map(lambda *leaves: torch.stack(leaves), *outputs)
