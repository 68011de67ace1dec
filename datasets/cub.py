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

from lil_meta.datasets.cache import SplitFileDataset
from lil_meta.datasets.source import SourceSplit, file_split, require
from lil_meta.engine.errors import DataError
from lil_meta.engine.registry import DATASETS

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
class CUB(SplitFileDataset):
    """CUB-200-2011 (module docstring); the arguments of :class:`SplitFileDataset`."""

    name = "cub"
    default_size = 84
    native_channels = 3
    layouts = ("CUB_200_2011/ with images/, images.txt, classes.txt, image_class_labels.txt",)
    default_split = DEFAULT_SPLIT
    _table: dict[str, list[Path]] | None = None

    def detect_layout(self) -> str:
        self._base = self.find_base((self.root / "CUB_200_2011", self.root), _FILES, Path.is_file)
        return "CUB_200_2011"

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
        chosen = self.split_classes(split, list(per_class), str(self._base / "classes.txt"))
        return file_split(chosen, [sorted(per_class[name]) for name in chosen],
                          [str(self._base / "images" / c) for c in chosen])
