"""A GBML's knobs in groups, each a frozen value: its inner learning rates, how it executes, and
which diagnostics it computes.

In a config each group is a node of the algorithm (``algorithm.rates.mode``,
``algorithm.execution.engine``, ``algorithm.diagnostics.metrics_period``); the flat keys of
earlier versions (``algorithm.engine``, ``algorithm.inner_lr_mode``, …) are still read, with a
warning naming the new key (:data:`engine.components.MOVED_KEYS`).
:class:`ExecutionPolicy` is :class:`Execution` resolved for one device: what actually runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from lil_meta.engine.errors import ConfigError

__all__ = ["Rates", "Execution", "Diagnostics", "ExecutionPolicy", "as_group", "ENGINES", "CHANNELS_LAST",
           "RATE_MODES"]

ENGINES = ("auto", "vmap", "loop")
CHANNELS_LAST = ("auto", "none", "query", "all")
RATE_MODES = ("scalar", "per_tensor", "per_element")


def _one_of(path: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{path}: expected one of {', '.join(choices)}; got '{value}'")


@dataclass(frozen=True)
class Rates:
    """The inner rates α: ``mode`` ``scalar``, ``per_tensor`` or ``per_element``, ``learn``
    (meta-learned: Meta-SGD is ``per_element`` + learned), ``per_step``: one rate per inner step
    besides (MAML++'s LSLR is ``per_tensor`` + learned + per step). Every rate starts at
    ``inner_lr``."""

    mode: str = "scalar"
    learn: bool = False
    per_step: bool = False

    def __post_init__(self) -> None:
        _one_of("algorithm.rates.mode", self.mode, RATE_MODES)


@dataclass(frozen=True)
class Execution:
    """How the inner loop runs; none of it changes the arithmetic, only its order and memory.

    ``engine``: ``vmap`` (tasks batched with ``torch.func.vmap``), ``loop`` (one task at a
    time) or ``auto`` (vmap on CUDA, the loop on CPU, where each measured faster).
    ``channels_last``: which task images are laid out NHWC (``none``, ``query``, ``all``,
    ``auto``: :meth:`GBML.policy`). ``checkpoint_inner_steps``: recompute each second-order
    inner step in the backward pass instead of keeping its graph (per-task loop only).
    ``precompute_features``: when only the head adapts, run the body once per task."""

    engine: str = "auto"
    channels_last: str = "auto"
    checkpoint_inner_steps: bool = False
    precompute_features: bool = True

    def __post_init__(self) -> None:
        _one_of("algorithm.execution.engine", self.engine, ENGINES)
        _one_of("algorithm.execution.channels_last", self.channels_last, CHANNELS_LAST)
        if self.checkpoint_inner_steps and self.engine == "vmap":
            raise ConfigError("algorithm.execution.checkpoint_inner_steps: runs on the per-task loop; set "
                              "algorithm.execution.engine to loop or auto")


@dataclass(frozen=True)
class Diagnostics:
    """The measurements that cost extra work, on logging steps (every ``metrics_period``
    training steps; 0: never) and in evaluation: AC (one more support gradient at θˢ) and
    ``acc_init`` always, ``hessian_ratio`` the hₖ of eq. 5, ``linearized_metrics`` the kernel
    predictor's ``lin_err``, ``lin_agree``, ``lin_acc``."""

    metrics_period: int = 20
    hessian_ratio: bool = True
    linearized_metrics: bool = True


@dataclass(frozen=True)
class ExecutionPolicy:
    """:class:`Execution` on one device: ``engine`` ``vmap`` or ``loop``, ``channels_last``
    ``none``, ``query`` or ``all``, and ``task_chunk`` what ``solver.task_chunk: auto`` means
    (1: one task at a time on the loop; 0: the whole batch under vmap)."""

    engine: str
    channels_last: str
    task_chunk: int


Group = TypeVar("Group", Rates, Execution, Diagnostics)


def as_group(kind: type[Group], value: Group | dict[str, Any] | None, path: str) -> Group:
    """``value`` as the frozen group ``kind``: an instance as it is, a mapping (a config node)
    key by key, ``None`` as the defaults; an unknown key is one :class:`ConfigError`."""
    if value is None:
        return kind()
    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(kind))}; "
                          f"got {value!r}")
    known = {f.name for f in dataclasses.fields(kind)}
    for key in value:
        if key not in known:
            raise ConfigError(f"{path}.{key}: unknown setting (accepted: {', '.join(sorted(known))})")
    return kind(**value)
