"""Whether the current code runs once per task or for all tasks at once under ``torch.func.vmap``.

:func:`engine.inner_loop.map_tasks` enters :func:`tasks_under_vmap` around its vmapped call;
layers whose fused kernels are wrong or slow under vmap consult :func:`tasks_vmapped` to pick
another form (see :class:`models.backbones.layers.TaskBatchNorm2d`). It lives here, with no
dependencies, so that models can read it without importing the inner loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["tasks_vmapped", "tasks_under_vmap"]

_TASKS_VMAPPED: ContextVar[bool] = ContextVar("tasks_vmapped", default=False)


def tasks_vmapped() -> bool:
    """True while :func:`engine.inner_loop.map_tasks` runs the per-task function under ``torch.func.vmap``."""
    return _TASKS_VMAPPED.get()


@contextmanager
def tasks_under_vmap() -> Iterator[None]:
    """Make :func:`tasks_vmapped` true inside the ``with`` block (restored on exit, even on error)."""
    token = _TASKS_VMAPPED.set(True)
    try:
        yield
    finally:
        _TASKS_VMAPPED.reset(token)
