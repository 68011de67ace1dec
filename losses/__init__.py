"""Outer-loss terms, registered in ``engine.registry.LOSSES`` by the explicit imports below.

A config lists the terms with their weights; ``build_losses`` builds them::

    losses:
      - {name: cross_entropy}
      - {name: phase, weight: 0.1}
      - {name: pseudo_amplitude, weight: 0.1}
"""

from __future__ import annotations

if __name__ != "lil_meta.losses":  # one import identity (docs/design.md §2)
    raise ImportError(f"{__name__!r} is the folder of lil_meta.losses: import it as lil_meta.losses")

from collections.abc import Mapping, Sequence

from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import LOSSES
from lil_meta.losses import (  # noqa: F401  (registration)
    cross_entropy,
    multi_step,
    phase,
    pseudo_amplitude,
    reptile,
    shot,
    shot_one_step,
)
from lil_meta.losses.base import OuterInputs, OuterLoss, kl_divergence, task_accuracy

__all__ = ["OuterInputs", "OuterLoss", "build_losses", "kl_divergence", "task_accuracy"]


def build_losses(specs: Sequence[Mapping], path: str = "losses", defaults: Mapping | None = None) -> list[OuterLoss]:
    """Build every term of a ``losses`` list; keys must be unique so output names are too.
    ``defaults``: arguments a term takes when its spec does not set them (e.g. the multi-step
    loss's ``anneal_iters`` from ``solver.max_iter``)."""
    terms = [LOSSES.build(dict(spec), f"{path}[{i}]", defaults=dict(defaults or {})) for i, spec in enumerate(specs)]
    keys = [t.key for t in terms]
    duplicate = next((k for k in keys if keys.count(k) > 1), None)
    if duplicate:
        raise ConfigError(f"{path}: the term '{duplicate}' appears twice")
    if not terms:
        raise ConfigError(f"{path}: empty; list at least one term (e.g. cross_entropy)")
    return terms
