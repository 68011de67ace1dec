"""``fc100``: FC100 (Oreshkin et al., NeurIPS 2018), CIFAR-100 split by superclass.

Source: the CIFAR-100 python pickles, as for ``cifar_fs`` (``cifar-100-python/{train,test,meta}``,
or ``ROOT`` being that folder), of which it also reads ``coarse_labels`` (the superclass of each
image) and ``meta``'s ``coarse_label_names``. The split lists superclasses, not classes:
``datasets/splits/fc100.json`` puts 12 of the 20 superclasses in train, 4 in val and 4 in test,
so that no split shares a superclass with another (60/20/20 fine classes, 600 images each, the
train and test pickles merged). A split's classes are the fine classes of its superclasses, in
the split file's superclass order and by fine name within one. ``split_file`` points to another
JSON of ``train``/``val``/``test`` lists of superclass names.
"""

from __future__ import annotations

from pathlib import Path

from lil_meta.datasets.cifar_fs import CifarFS
from lil_meta.datasets.source import SourceSplit, load_pickle
from lil_meta.engine.errors import DataError
from lil_meta.engine.registry import DATASETS

__all__ = ["FC100", "DEFAULT_SPLIT"]

DEFAULT_SPLIT = Path(__file__).resolve().parent / "splits" / "fc100.json"


@DATASETS.register("fc100")
class FC100(CifarFS):
    """FC100 (module docstring); the arguments of :class:`SplitFileDataset`."""

    name = "fc100"
    layouts = ("cifar-100-python/{train,test,meta} (the CIFAR-100 python version, with "
               "coarse_labels)",)
    default_split = DEFAULT_SPLIT

    def _superclasses(self) -> tuple[list[str], dict[int, int]]:
        """The superclass names and the superclass of each fine class, from the pickles."""
        _, fine, _ = self._load_pool()
        meta_path = self._folder / "meta"
        meta = load_pickle(meta_path, "the CIFAR-100 meta pickle with 'coarse_label_names'")
        if "coarse_label_names" not in meta:
            raise DataError(f"{meta_path}: expected 'coarse_label_names' (the 20 superclasses)")
        if self._coarse is None:
            raise DataError(f"{self._folder / '{train,test}'}: expected 'coarse_labels' (the "
                            f"superclass of each image) in both pickles")
        names = [str(n) for n in meta["coarse_label_names"]]
        parent: dict[int, int] = {}
        for f, c in zip(fine.tolist(), self._coarse.tolist(), strict=True):
            if not 0 <= c < len(names):
                raise DataError(f"{self._folder}: coarse label {c} outside the {len(names)} "
                                f"coarse_label_names of {meta_path}")
            if parent.setdefault(f, c) != c:
                raise DataError(f"{self._folder}: fine class {f} has images in superclasses "
                                f"{parent[f]} and {c}; expected one superclass per class")
        return names, parent

    def read_split(self, layout: str, split: str) -> SourceSplit:
        names = self._load_pool()[2]
        supers, parent = self._superclasses()
        chosen = self.split_classes(split, supers,
                                    f"the coarse_label_names of {self._folder / 'meta'}")
        classes = []
        for superclass in chosen:
            k = supers.index(superclass)
            classes += sorted(names[f] for f, c in parent.items() if c == k)
        return self._pool_split(classes)
