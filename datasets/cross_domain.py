"""``cross_domain``: meta-train on one dataset, validate and test on others, from the config alone.

    data:
      name: cross_domain
      image_size: 84
      channels: 3
      args:
        train: {name: mini_imagenet, root: /data/miniImageNet}
        test:  {name: cub, root: /data/CUB}
        # val: {name: cub, root: /data/CUB}   # default: the val split of the train dataset

``split("train")`` is the train split of ``train``, ``split("val")`` the val split of ``val``
(default ``train``), ``split("test")`` the test split of ``test`` (e.g. miniImageNet → CUB as
in Chen et al. 2019). Each entry is a dataset spec like ``data`` itself (``name``, ``root``,
dataset arguments, directly or under ``args``); ``image_size`` and ``channels`` are set once here for all of them so that every
split has the shape the network expects. A part whose ``root`` is unset fails with
``data.args.<part>.root: required for dataset ...``. The paper's Table 3 rows are the
``configs/maml[_lil]_<train>2<test>_<k>shot.yaml`` files (bases ``configs/_base_/xd_*.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lil_meta.datasets.sampler import SplitData
from lil_meta.engine.errors import ConfigError, DataError
from lil_meta.engine.registry import DATASETS

__all__ = ["CrossDomain"]


@DATASETS.register("cross_domain")
class CrossDomain:
    """Splits drawn from different datasets (module docstring)."""

    def __init__(self, train: Mapping[str, Any] | None = None, test: Mapping[str, Any] | None = None,
                 val: Mapping[str, Any] | None = None, image_size: int | None = None,
                 channels: int | None = None) -> None:
        specs = {"train": train, "val": val if val is not None else train, "test": test}
        full: dict[str, dict[str, Any]] = {}
        for split, spec in specs.items():  # check every spec before building any dataset
            if not isinstance(spec, Mapping) or not spec.get("name"):
                raise ConfigError(f"data.args.{split}: expected a dataset spec such as "
                                  f"{{name: mini_imagenet, root: /path}}, got {spec!r}")
            clash = [k for k in ("image_size", "channels") if k in spec]
            if clash:
                raise ConfigError(f"data.args.{split}.{clash[0]}: set it once as data.{clash[0]}")
            flat = {k: v for k, v in spec.items() if k != "args" and v not in (None, "")}
            full[split] = {**flat, **(spec.get("args") or {}),
                           **({"image_size": image_size} if image_size is not None else {}),
                           **({"channels": channels} if channels is not None else {})}
        built: dict[str, Any] = {}
        self.parts: dict[str, Any] = {}
        for split, spec in full.items():
            key = repr(sorted((k, repr(v)) for k, v in spec.items()))
            if key not in built:
                try:
                    built[key] = DATASETS.build(spec, f"data.args.{split}")
                except ConfigError as exc:  # a reader's "data.root: required" means this part's root
                    msg = str(exc)
                    if not msg.startswith("data.root:") or spec.get("root"):
                        raise
                    raise ConfigError(f"data.args.{split}.root:{msg[len('data.root:'):]}") from None
            self.parts[split] = built[key]

    def split(self, name: str) -> SplitData:
        if name not in self.parts:
            raise DataError(f"cross_domain: unknown split '{name}' (available: train, val, test)")
        return self.parts[name].split(name)
