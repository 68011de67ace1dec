"""``mini_imagenet``: miniImageNet with the Ravi & Larochelle (2017) 64/16/20 class split.

Two source layouts are read (the split comes from the files; nothing is hard-coded):

- ``pickle``: ``mini-imagenet-cache-{train,val,test}.pkl``, each a dict with ``image_data``
  (uint8 ``[N, 84, 84, 3]``) and ``class_dict`` (class name → list of row indices);
- ``csv``: ``images/`` (all JPEGs in one folder) with ``train.csv``, ``val.csv``, ``test.csv``
  (header ``filename,label``).

Classes are ordered by name within a split.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lil_meta.datasets.cache import CachedDataset
from lil_meta.datasets.source import SourceSplit, hwc_uint8, load_pickled_dict, open_image, require
from lil_meta.engine.errors import DataError
from lil_meta.engine.registry import DATASETS

__all__ = ["MiniImageNet"]

_PKL = "mini-imagenet-cache-{}.pkl"
_PKL_WHAT = "a pickled dict with 'image_data' (uint8 [N, 84, 84, 3]) and 'class_dict' (class -> indices)"


def read_csv_split(path: Path, image_dir: Path, split: str) -> SourceSplit:
    """A ``filename,label`` CSV whose files live in ``image_dir``."""
    require(path, f"the {split} split file (CSV with header 'filename,label')")
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc}); expected header 'filename,label'") from None
    if not rows or [c.strip() for c in rows[0][:2]] != ["filename", "label"]:
        raise DataError(f"{path}: expected a CSV with header 'filename,label', got {rows[:1]}")
    body = [r for r in rows[1:] if r]
    bad = next((i for i, r in enumerate(body) if len(r) < 2), None)
    if bad is not None:
        raise DataError(f"{path}: line {bad + 2}: expected 'filename,label', got {body[bad]}")
    classes = sorted({r[1] for r in body})
    index = {c: i for i, c in enumerate(classes)}
    files = [image_dir / r[0] for r in body]
    labels = np.array([index[r[1]] for r in body], dtype=np.int64)
    return SourceSplit(classes, labels, lambda i: open_image(files[i], str(files[i])),
                       [f"{path} (label {c})" for c in classes])


@DATASETS.register("mini_imagenet")
class MiniImageNet(CachedDataset):
    """miniImageNet (module docstring for the layouts); arguments as :class:`CachedDataset`."""

    name = "mini_imagenet"
    default_size = 84
    native_channels = 3
    layouts = ("pickle: mini-imagenet-cache-{train,val,test}.pkl",
               "csv: images/ + train.csv, val.csv, test.csv (header filename,label)")

    def detect_layout(self) -> str:
        if (self.root / _PKL.format("train")).exists():
            return "pickle"
        if (self.root / "train.csv").exists() or (self.root / "images").is_dir():
            return "csv"
        raise self.unsupported_layout()

    def read_split(self, layout: str, split: str) -> SourceSplit:
        if layout == "csv":
            require(self.root / "images", "the folder 'images/' holding the JPEGs named in the CSVs")
            return read_csv_split(self.root / f"{split}.csv", self.root / "images", split)
        path = self.root / _PKL.format(split)
        data = load_pickled_dict(path, _PKL_WHAT, ("image_data", "class_dict"))
        images = hwc_uint8(data["image_data"], path, "image_data")
        classes = sorted(data["class_dict"])
        order, labels = [], []
        for c, name in enumerate(classes):
            idx = [int(i) for i in data["class_dict"][name]]
            if idx and (min(idx) < 0 or max(idx) >= len(images)):
                raise DataError(f"{path}: class_dict['{name}'] indexes beyond the {len(images)} "
                                f"images of image_data")
            order += idx
            labels += [c] * len(idx)
        return SourceSplit(classes, np.array(labels, dtype=np.int64),
                           lambda i: images[order[i]], [f"{path} (class {c})" for c in classes])

