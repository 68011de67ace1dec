"""When only the head adapts (ANIL), the inner loop runs on the head alone over features the body
computes once per task: the same numbers as the whole network at every step, less work.

The network contract (:func:`check_network`): ``model.head`` an ``nn.Linear`` and
``model(x) == model.head(model.features(x))``. :func:`head_only` says when the inner loop can
run on the head alone; :func:`head_task_network` gives the head and its inputs, the features
of the support and the query set (each through the body on its own, as in the full forward,
so BatchNorm uses each set's statistics), still differentiable with respect to the body for
the outer loss. Parameter names keep their full form (``head.weight``) either way.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from lil_meta.engine.errors import ConfigError
from lil_meta.engine.inner_loop import Params, takes_step

__all__ = ["check_network", "head_only", "head_task_network"]


class _Part(nn.Module):
    """One named child of the network, called alone under its full parameter names."""

    def __init__(self, name: str, module: nn.Module):
        super().__init__()
        self.part = name
        self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.part)(x)


def _prefixed(params: Params, prefix: str) -> Params:
    return {name: t for name, t in params.items() if name.startswith(prefix)}


def check_network(model: nn.Module, probe: torch.Tensor | None = None) -> None:
    """The network contract, one :class:`ConfigError` naming what is missing: ``model.head`` an
    ``nn.Linear`` (the tasks' way is its output size; ANIL adapts it, BOIL holds it) and
    ``model.features`` a module; with ``probe`` (a small input batch), also
    ``model(x) == model.head(model.features(x))``."""
    name = type(model).__name__
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        got = "none" if head is None else type(head).__name__
        raise ConfigError(f"model.backbone: the network ({name}) needs a .head that is an nn.Linear (the "
                          f"classifier the tasks' way is read from); it has {got}")
    if not isinstance(getattr(model, "features", None), nn.Module):
        raise ConfigError(f"model.backbone: the network ({name}) needs a .features module (the body, images "
                          "-> flat features) with model(x) == model.head(model.features(x))")
    if probe is None:
        return
    step = {"step": 0} if takes_step(model) else {}
    with torch.no_grad():
        whole, parts = model(probe, **step), head(model.features(probe, **step))
    if whole.shape != parts.shape or not torch.allclose(whole, parts, rtol=1e-5, atol=1e-6):
        raise ConfigError(f"model.backbone: the network ({name}) computes model(x) otherwise than "
                          "model.head(model.features(x)); its forward must be the head over the features")


def head_only(model: nn.Module, adapted: Params, enabled: bool) -> bool:
    """True when the inner loop can run on the head alone, over precomputed features: ``enabled``
    (``algorithm.execution.precompute_features``), the adapted set is exactly ``model.head``'s
    parameters and every other tensor of the network lives in ``model.features``, whose output
    does not depend on the inner step (no per-step BatchNorm weights)."""
    if takes_step(model) or not (enabled and isinstance(getattr(model, "features", None), nn.Module)
            and isinstance(getattr(model, "head", None), nn.Module)):
        return False
    head = {f"head.{n}" for n, _ in model.head.named_parameters()}
    everything = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    return adapted.keys() == head and all(n.startswith(("head.", "features.")) for n in everything)


def head_task_network(model: nn.Module, frozen: Params, support_x, query_x):
    """``(head, its held-fixed tensors, support features, query features)`` of one task, the
    body run once on each set with θ⁰'s body tensors (module doc)."""
    body = _Part("features", model.features)
    body_params = _prefixed(frozen, "features.")
    support_f, query_f = (functional_call(body, body_params, (x,)) for x in (support_x, query_x))
    return _Part("head", model.head), _prefixed(frozen, "head."), support_f, query_f
