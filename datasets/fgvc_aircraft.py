"""``fgvc_aircraft``: FGVC-Aircraft (Maji et al., 2013), 100 aircraft variants, 70/15/15.

Source: the Oxford VGG archive ``fgvc-aircraft-2013b.tar.gz`` unpacked, ``ROOT/fgvc-aircraft-2013b/data/``
(or ``ROOT`` being ``fgvc-aircraft-2013b`` or its ``data`` folder) with ``images/<id>.jpg``,
``variants.txt`` (one variant name a line) and ``images_variant_{train,val,test}.txt``
(``<image id> <variant name>`` a line). The three official image lists are merged, so each
variant has all its images (about 100); whole images are used (no bounding-box crop), as for
``cub`` and ``cars``.

Split: ``datasets/splits/fgvc_aircraft.json`` (shipped; its ``_source`` cites it), the variant
split of Meta-Dataset (Triantafillou et al., ICLR 2020) as learn2learn ships it: 70 train, 15
val and 15 test variants. Classes are matched by variant name; a variant of the split file
that is not in ``variants.txt`` is a one-line :class:`DataError`. ``split_file`` replaces it
with another JSON of ``train``/``val``/``test`` lists of variant names.
"""

from __future__ import annotations

from pathlib import Path

from lil_meta.datasets.cache import SplitFileDataset
from lil_meta.datasets.source import SourceSplit, file_split, require
from lil_meta.engine.errors import DataError
from lil_meta.engine.registry import DATASETS

__all__ = ["FGVCAircraft", "DEFAULT_SPLIT"]

DEFAULT_SPLIT = Path(__file__).resolve().parent / "splits" / "fgvc_aircraft.json"

_LISTS = tuple(f"images_variant_{part}.txt" for part in ("train", "val", "test"))
_PARTS = ("variants.txt", *_LISTS, "images")


@DATASETS.register("fgvc_aircraft")
class FGVCAircraft(SplitFileDataset):
    """FGVC-Aircraft (module docstring); the arguments of :class:`SplitFileDataset`."""

    name = "fgvc_aircraft"
    default_size = 84
    native_channels = 3
    layouts = ("fgvc-aircraft-2013b/data/ with images/, variants.txt and "
               "images_variant_{train,val,test}.txt",)
    default_split = DEFAULT_SPLIT
    _table: dict[str, list[Path]] | None = None

    def detect_layout(self) -> str:
        bases = (self.root / "fgvc-aircraft-2013b" / "data", self.root / "data", self.root)
        self._base = self.find_base(bases, _PARTS)
        return "fgvc-aircraft-2013b"

    def _load(self) -> dict[str, list[Path]]:
        """Variant name → image paths, in the order of ``variants.txt``."""
        if self._table is not None:
            return self._table
        b = self._base
        variants_path = require(b / "variants.txt", "one variant name a line")
        variants = [v.strip() for v in variants_path.read_text(errors="replace").splitlines()
                    if v.strip()]
        per_class: dict[str, list[Path]] = {v: [] for v in variants}
        seen: set[str] = set()
        for name in _LISTS:
            path = require(b / name, "'<image id> <variant name>' a line")
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.strip().split(maxsplit=1)
                if len(parts) != 2 or parts[1] not in per_class:
                    raise DataError(f"{path}: line {n}: expected '<image id> <variant name>' "
                                    f"with a variant of {variants_path}, got {line!r}")
                if parts[0] in seen:
                    raise DataError(f"{path}: line {n}: image {parts[0]} is listed twice")
                seen.add(parts[0])
                per_class[parts[1]].append(b / "images" / f"{parts[0]}.jpg")
        self._table = per_class
        return per_class

    def read_split(self, layout: str, split: str) -> SourceSplit:
        per_class = self._load()
        chosen = self.split_classes(split, list(per_class), str(self._base / "variants.txt"))
        return file_split(chosen, [sorted(per_class[name]) for name in chosen],
                          [f"{self._base / 'images'} (variant {name})" for name in chosen])
