"""``cars``: Stanford Cars (Krause et al., 2013) with this project's 98/49/49 class split.

Source: the official release, ``ROOT`` (or ``ROOT/stanford_cars``, torchvision's folder) with
``cars_train/*.jpg`` and the devkit's MATLAB files ``devkit/cars_train_annos.mat`` (struct
array ``annotations`` with fields ``bbox_x1``, ``bbox_y1``, ``bbox_x2``, ``bbox_y2``,
``class`` (1-based) and ``fname``) and ``devkit/cars_meta.mat`` (``class_names``), read with
``scipy.io.loadmat``. Only the labelled ``cars_train`` images (8 144, about 41 per class) are
read. Whole images are used: the bounding boxes are ignored (no crop), as for ``cub``.

Split: ``datasets/splits/cars.json`` (shipped), **this project's own**, not copied from a paper:
with the 196 classes numbered by their devkit class id, ``i = class - 1 = 0..195``, ``i % 2 == 0``
is train (98 classes), ``i % 4 == 1`` val (49), ``i % 4 == 3`` test (49) — the index rule of
Chen et al. (2019) for CUB, applied to the class ids. The file lists class names as spelled in
``cars_meta.mat`` (and, under ``_class_names_by_id``, all of them in class-id order); classes are
matched by name, and a class of the split file that is not in ``cars_meta.mat`` is a one-line
:class:`DataError`. ``split_file`` replaces it with another JSON of ``train``/``val``/``test``
lists of class names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lil_meta.datasets.cache import SplitFileDataset
from lil_meta.datasets.source import SourceSplit, file_split, require
from lil_meta.engine.errors import DataError
from lil_meta.engine.registry import DATASETS

__all__ = ["Cars", "DEFAULT_SPLIT"]

DEFAULT_SPLIT = Path(__file__).resolve().parent / "splits" / "cars.json"

_ANNOS = Path("devkit") / "cars_train_annos.mat"
_META = Path("devkit") / "cars_meta.mat"
_IMAGES = "cars_train"
_ANNOS_WHAT = ("a MATLAB file with a struct array 'annotations' (fields bbox_x1, bbox_y1, "
               "bbox_x2, bbox_y2, class, fname)")
_META_WHAT = "a MATLAB file with a cell array 'class_names'"


def _load_mat(path: Path, key: str, what: str) -> Any:
    """``loadmat(path)[key]`` (squeezed); any failure is one :class:`DataError` line."""
    require(path, what)
    try:
        from scipy.io import loadmat
    except ImportError:  # pragma: no cover - scipy is a dependency
        raise DataError(f"{path}: reading it needs scipy (pip install 'scipy>=1.10')") from None
    try:
        mat = loadmat(str(path), squeeze_me=True)
    except Exception as exc:  # truncated, not a .mat, unsupported version
        raise DataError(f"{path}: cannot read MATLAB file ({type(exc).__name__}: {exc}); "
                        f"expected {what}") from None
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path}: no '{key}'; expected {what}, got {found}")
    return mat[key]


@DATASETS.register("cars")
class Cars(SplitFileDataset):
    """Stanford Cars (module docstring); the arguments of :class:`SplitFileDataset`."""

    name = "cars"
    default_size = 84
    native_channels = 3
    layouts = ("cars_train/ with devkit/cars_train_annos.mat and devkit/cars_meta.mat "
               "(directly or under stanford_cars/)",)

    default_split = DEFAULT_SPLIT
    _table: dict[str, list[Path]] | None = None

    def detect_layout(self) -> str:
        self._base = self.find_base((self.root / "stanford_cars", self.root),
                                    (_ANNOS, _META, _IMAGES))
        return "devkit"

    def _load(self) -> dict[str, list[Path]]:
        """Class name → image paths, in class-id order (dicts keep insertion order)."""
        if self._table is not None:
            return self._table
        b = self._base
        annos_path, meta_path = b / _ANNOS, b / _META
        names = [str(n) for n in np.atleast_1d(_load_mat(meta_path, "class_names", _META_WHAT))]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise DataError(f"{meta_path}: class name '{dup}' appears twice; expected unique "
                            f"class_names")
        annos = np.atleast_1d(_load_mat(annos_path, "annotations", _ANNOS_WHAT))
        fields = annos.dtype.names or ()
        if "class" not in fields or "fname" not in fields:
            raise DataError(f"{annos_path}: 'annotations' has fields {list(fields)}; expected "
                            f"{_ANNOS_WHAT}")
        per_class: dict[str, list[Path]] = {n: [] for n in names}
        for a in annos:
            try:
                cid = int(a["class"])
            except (TypeError, ValueError):
                cid = -1
            if not 1 <= cid <= len(names):
                raise DataError(f"{annos_path}: image {a['fname']!r} has class {a['class']!r}; "
                                f"expected a class id in 1..{len(names)} (cars_meta.mat)")
            per_class[names[cid - 1]].append(b / _IMAGES / str(a["fname"]))
        self._table = per_class
        return per_class

    def read_split(self, layout: str, split: str) -> SourceSplit:
        per_class = self._load()
        ordered = list(per_class)  # by class id
        chosen = self.split_classes(split, ordered, str(self._base / _META))
        sources = [f"{self._base / _ANNOS} (class {ordered.index(n) + 1})" for n in chosen]
        return file_split(chosen, [sorted(per_class[name]) for name in chosen], sources)
