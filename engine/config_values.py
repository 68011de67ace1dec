"""Config values a run cannot take, refused when the config loads (:func:`engine.config.load_config`
calls :func:`check_values`), before anything is built or written; each one :class:`ConfigError`
line naming the key and the bound (docs/errors.md lists them).
"""

from __future__ import annotations

import math
import os
import re

from omegaconf import DictConfig, ListConfig, OmegaConf

from lil_meta.engine.errors import ConfigError

__all__ = ["check_values", "meta_batch_bound", "MAX_SEED", "MAX_TEST_TASKS"]


MAX_SEED = 2**63 - 1  # torch's, numpy's (taken mod 2**32) and Python's generators all take it
MAX_TEST_TASKS = 1_000_000  # 600-10000 in the literature; each task is built and kept in memory
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def meta_batch_bound(cfg: DictConfig) -> tuple[int, int | None]:
    """The largest ``solver.meta_batch`` whose images (float32, support and query) fit in this
    machine's memory, and that memory in bytes (``None``: unknown, no bound)."""
    d = cfg.data
    task_bytes = 4 * int(d.way) * (int(d.shot) + int(d.query)) * int(d.channels) * int(d.image_size) ** 2
    memory = _memory_bytes()
    if memory is None or task_bytes <= 0:
        return 2**31 - 1, None
    return max(1, memory // task_bytes), memory


def _number(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def check_values(cfg: DictConfig) -> None:
    """The values a config may not take, each one :class:`ConfigError` naming the key, checked
    when the config loads, before anything is built or written: numbers out of range (a
    meta-batch that cannot fit in memory, a negative weight decay, a non-finite or non-positive
    learning rate, a non-finite inner learning rate, a seed the generators cannot take, an empty
    or unbounded test), a device string torch cannot train on, a module name that cannot be
    imported as written, a task chunk that is neither ``auto`` nor a count."""
    solver = cfg.solver
    if int(solver.meta_batch) < 1:
        raise ConfigError(f"solver.meta_batch: must be >= 1, got {solver.meta_batch}")
    bound, memory = meta_batch_bound(cfg)
    if int(solver.meta_batch) > bound:
        raise ConfigError(f"solver.meta_batch: {solver.meta_batch} tasks do not fit in memory: the images of "
                          f"one meta-batch would take {int(solver.meta_batch) * (memory // bound) / 2**30:.3g} "
                          f"GiB (float32) and this machine has {memory / 2**30:.3g} GiB; at most {bound} here")
    chunk = solver.task_chunk
    if chunk != "auto" and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0):
        raise ConfigError(f"solver.task_chunk: expected auto or an integer >= 0 (tasks per forward and backward; "
                          f"0: the whole meta-batch), got {chunk!r}")
    lr = float(solver.lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"solver.lr: must be a finite number > 0, got {solver.lr}")
    wd = float(solver.weight_decay)
    if not (math.isfinite(wd) and wd >= 0):
        raise ConfigError(f"solver.weight_decay: must be a finite number >= 0, got {solver.weight_decay}")
    for key in ("algorithm.inner_lr", "pretrain.algorithm.inner_lr"):
        value = _number(cfg, key)
        if value is not None and not math.isfinite(float(value)):
            raise ConfigError(f"{key}: must be a finite number, got {value}")
    for key in ("seed", "test.seed"):
        value = OmegaConf.select(cfg, key)
        if not 0 <= int(value) <= MAX_SEED:
            raise ConfigError(f"{key}: must be an integer in [0, 2**63 - 1] (the random generators' range), "
                              f"got {value}")
    if int(cfg.test.batch) < 1:
        raise ConfigError(f"test.batch: must be >= 1 (tasks per evaluation batch), got {cfg.test.batch}")
    for key in ("test.tasks", "test.val_tasks"):
        value = int(OmegaConf.select(cfg, key))
        if not 1 <= value <= MAX_TEST_TASKS:
            raise ConfigError(f"{key}: must be between 1 and {MAX_TEST_TASKS}, got {value}")
    if not float(cfg.launch.timeout_s) > 0:
        raise ConfigError(f"launch.timeout_s: must be > 0 (seconds a collective waits for a process), "
                          f"got {cfg.launch.timeout_s}")
    device = str(cfg.device)
    if not _DEVICE.match(device):
        raise ConfigError(f"device: '{device}' is not a device to train on (use auto, cpu, cuda, cuda:N or mps)")
    modules = cfg.get("extra_modules") or []
    if isinstance(modules, (list, ListConfig)):
        for name in modules:
            if not isinstance(name, str) or not _MODULE_NAME.match(name):
                raise ConfigError(f"extra_modules: {name!r} is not an importable module name (dotted "
                                  "identifiers such as my_package.variants; no relative or file names)")
