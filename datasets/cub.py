"""``cub``: Caltech-UCSD Birds-200-2011 with a 100/50/50 class split.

Source: ``CUB_200_2011/`` (or ``ROOT`` being that folder) with ``images/<class>/*.jpg``,
``images.txt`` (``id path``), ``classes.txt`` (``class_id name``) and
``image_class_labels.txt`` (``id class_id``). Whole images are used (no bounding-box crop).

Split: ``datasets/splits/cub.json`` (shipped; its ``_source`` cites it), the one of Chen et al.,
"A Closer Look at Few-shot Classification" (ICLR 2019, ``filelists/CUB/write_CUB_filelist.py``):
with the 200 class folders sorted by name and numbered ``i = 0..199``, ``i % 2 == 0`` is train
(100 classes), ``i % 4 == 1`` val (50), ``i % 4 == 3`` test (50). Classes are matched by their
folder name as listed in ``classes.txt``; a class of the split file that is not there is a
one-line :class:`DataError`. ``split_file`` replaces it with another JSON of the same form
(``train``/``val``/``test`` lists of class folder names).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.cache import (
    CachedDataset,
    SourceSplit,
    file_digest,
    open_image,
    require,
    split_classes,
)
from engine.errors import DataError
from engine.registry import DATASETS

__all__ = ["CUB", "DEFAULT_SPLIT"]

DEFAULT_SPLIT = Path(__file__).resolve().parent / "splits" / "cub.json"

_FILES = ("images.txt", "classes.txt", "image_class_labels.txt")


def _read_table(path: Path, what: str) -> list[tuple[str, str]]:
    require(path, what)
    rows = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}: line {n}: expected {what}, got {line!r}")
        rows.append((parts[0], parts[1].strip()))
    return rows


@DATASETS.register("cub")
class CUB(CachedDataset):
    """CUB-200-2011 (module docstring); ``split_file`` plus the arguments of :class:`CachedDataset`."""

    name = "cub"
    default_size = 84
    native_channels = 3
    layouts = ("CUB_200_2011/ with images/, images.txt, classes.txt, image_class_labels.txt",)

    def __init__(self, root: str | None = None, image_size: int | None = None,
                 channels: int | None = None, split_file: str | None = None, **kwargs) -> None:
        self.split_file = Path(split_file) if split_file else DEFAULT_SPLIT
        self._table = None
        super().__init__(root, image_size, channels, **kwargs)

    def cache_params(self) -> dict:
        return {"split_file": file_digest(self.split_file)}

    def detect_layout(self) -> str:
        for base in (self.root / "CUB_200_2011", self.root):
            present = [(base / f).is_file() for f in _FILES]
            if all(present):
                self._base = base
                return "CUB_200_2011"
            if any(present):
                raise self.unsupported_layout(f"{base / _FILES[present.index(False)]} is missing")
        raise self.unsupported_layout()

    def _load(self):
        if self._table is None:
            b = self._base
            classes = dict(_read_table(b / "classes.txt", "'<class_id> <class_folder>' per line"))
            paths = dict(_read_table(b / "images.txt", "'<image_id> <class_folder>/<file>' per line"))
            image_class = _read_table(b / "image_class_labels.txt", "'<image_id> <class_id>' per line")
            per_class: dict[str, list[Path]] = {name: [] for name in classes.values()}
            for image_id, class_id in image_class:
                if image_id not in paths or class_id not in classes:
                    raise DataError(f"{b / 'image_class_labels.txt'}: image {image_id} / class "
                                    f"{class_id} not listed in images.txt / classes.txt")
                per_class[classes[class_id]].append(b / "images" / paths[image_id])
            self._table = per_class
        return self._table

    def read_split(self, layout: str, split: str) -> SourceSplit:
        per_class = self._load()
        chosen = split_classes(self.split_file, split, list(per_class), str(self._base / "classes.txt"))
        files, labels = [], []
        for c, name in enumerate(chosen):
            files += sorted(per_class[name])
            labels += [c] * len(per_class[name])
        return SourceSplit(chosen, np.array(labels, dtype=np.int64),
                           lambda i: open_image(files[i], str(files[i])),
                           [str(self._base / "images" / c) for c in chosen])
