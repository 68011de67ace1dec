"""Few-shot data: ``TaskBatch``, episodic samplers and the registered datasets.

Datasets register themselves in :data:`engine.registry.DATASETS` when imported below. A dataset
is any object with ``split(name) -> SplitData`` for ``"train"``, ``"val"`` and ``"test"``.
The real benchmarks (``mini_imagenet``, ``tiered_imagenet``, ``cifar_fs``, ``fc100``, ``omniglot``,
``cub``, ``cars``, ``fgvc_aircraft``) share the decode-once cache of :mod:`datasets.cache`; see docs/datasets.md.
"""

from __future__ import annotations

if __name__ != "lil_meta.datasets":  # one import identity (docs/design.md §2)
    raise ImportError(f"{__name__!r} is the folder of lil_meta.datasets: import it as lil_meta.datasets")

from collections.abc import Mapping
from typing import Any

from lil_meta.datasets import (
    cars,  # noqa: F401  (registers "cars")
    cifar_fs,  # noqa: F401  (registers "cifar_fs")
    cross_domain,  # noqa: F401  (registers "cross_domain")
    cub,  # noqa: F401  (registers "cub")
    fc100,  # noqa: F401  (registers "fc100")
    fgvc_aircraft,  # noqa: F401  (registers "fgvc_aircraft")
    glyphs,  # noqa: F401  (registers "glyphs")
    mini_imagenet,  # noqa: F401  (registers "mini_imagenet")
    omniglot,  # noqa: F401  (registers "omniglot")
    tiered_imagenet,  # noqa: F401  (registers "tiered_imagenet")
)
from lil_meta.datasets.baselines import nearest_class_mean_accuracy
from lil_meta.datasets.sampler import EpisodicSampler, SplitData, TaskList
from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import DATASETS

__all__ = [
    "TaskBatch",
    "SplitData",
    "EpisodicSampler",
    "TaskList",
    "nearest_class_mean_accuracy",
    "build_dataset",
]


def build_dataset(cfg: Mapping[str, Any]) -> Any:
    """Build the dataset named by a config ``data`` section.

    ``name``, ``root``, ``image_size``, ``channels`` and ``seed`` are passed when set (an empty
    ``root`` keeps the dataset's default); the optional ``args`` mapping adds dataset-specific
    keyword arguments. Unknown names or arguments raise :class:`ConfigError` naming the key.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"data: expected a mapping, got {type(cfg).__name__}")
    spec: dict[str, Any] = {"name": cfg.get("name")}
    for key in ("root", "image_size", "channels", "seed"):
        if cfg.get(key) not in (None, ""):
            spec[key] = cfg[key]
    args = cfg.get("args") or {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"data.args: expected a mapping of dataset arguments, got {args!r}")
    clash = sorted(set(args) & set(spec))
    if clash:
        raise ConfigError(f"data.args.{clash[0]}: set it as data.{clash[0]}, not inside data.args")
    return DATASETS.build({**spec, **args}, "data")
