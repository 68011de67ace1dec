"""``cifar_fs``: CIFAR-FS (Bertinetto et al., ICLR 2019) from the CIFAR-100 python pickles.

Source: ``cifar-100-python/{train,test,meta}`` (or ``ROOT`` being that folder): ``train`` and
``test`` are dicts with ``data`` (uint8 ``[N, 3072]``, channel-major 32×32 RGB) and
``fine_labels``; ``meta`` has ``fine_label_names``. Both pickles are merged, so every class has
its 600 images, and classes are split 64/16/20 by name following ``datasets/splits/cifar_fs.json``
(the published CIFAR-FS split; ``split_file`` points to another JSON of the same form).
Images are upsampled from 32 px to ``image_size`` (default 84, as for miniImageNet-sized nets;
set ``data.image_size=32`` to keep the originals).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lil_meta.datasets.cache import SplitFileDataset
from lil_meta.datasets.source import SourceSplit, load_pickle
from lil_meta.engine.errors import DataError
from lil_meta.engine.registry import DATASETS

__all__ = ["CifarFS", "DEFAULT_SPLIT"]

DEFAULT_SPLIT = Path(__file__).resolve().parent / "splits" / "cifar_fs.json"
_WHAT = "a CIFAR-100 python pickle: a dict with 'data' (uint8 [N, 3072]) and 'fine_labels'"


@DATASETS.register("cifar_fs")
class CifarFS(SplitFileDataset):
    """CIFAR-FS (module docstring); the arguments of :class:`SplitFileDataset`."""

    name = "cifar_fs"
    default_size = 84
    native_channels = 3
    layouts = ("cifar-100-python/{train,test,meta} (the CIFAR-100 python version)",)

    default_split = DEFAULT_SPLIT
    _pool: tuple[np.ndarray, np.ndarray, list[str]] | None = None
    # per image, the CIFAR-100 superclass ('coarse_labels'), when both pickles have it
    _coarse: np.ndarray | None = None

    def detect_layout(self) -> str:
        for folder in (self.root / "cifar-100-python", self.root):
            if (folder / "meta").is_file() and (folder / "train").is_file():
                self._folder = folder
                return "cifar-100-python"
        raise self.unsupported_layout()

    def _load_pool(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if self._pool is None:
            meta_path = self._folder / "meta"
            meta = load_pickle(meta_path, "the CIFAR-100 meta pickle with 'fine_label_names'")
            if not isinstance(meta, dict) or "fine_label_names" not in meta:
                raise DataError(f"{meta_path}: expected a dict with 'fine_label_names'")
            data, labels, coarse = [], [], []
            for part in ("train", "test"):
                path = self._folder / part
                d = load_pickle(path, _WHAT)
                if not isinstance(d, dict) or "data" not in d or "fine_labels" not in d:
                    raise DataError(f"{path}: expected {_WHAT}")
                x = np.asarray(d["data"])
                if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
                    raise DataError(f"{path}: 'data' must be uint8 [N, 3072], got {x.dtype} {x.shape}")
                y = np.asarray(d["fine_labels"], dtype=np.int64)
                if y.shape != (len(x),):
                    raise DataError(f"{path}: {len(y)} fine_labels for {len(x)} images")
                data.append(x)
                labels.append(y)
                if d.get("coarse_labels") is not None:
                    c = np.asarray(d["coarse_labels"], dtype=np.int64)
                    if c.shape != (len(x),):
                        raise DataError(f"{path}: {len(c)} coarse_labels for {len(x)} images")
                    coarse.append(c)
            self._coarse = np.concatenate(coarse) if len(coarse) == 2 else None
            self._pool = (np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
                          np.concatenate(labels), [str(n) for n in meta["fine_label_names"]])
        return self._pool

    def read_split(self, layout: str, split: str) -> SourceSplit:
        names = self._load_pool()[2]
        classes = self.split_classes(split, names, f"the fine_label_names of {self._folder / 'meta'}")
        return self._pool_split(classes)

    def _pool_split(self, classes: list[str]) -> SourceSplit:
        """The pool's images of the fine classes ``classes``, labelled by their place in it."""
        images, fine, names = self._load_pool()
        pos = {names.index(c): k for k, c in enumerate(classes)}
        rows = np.flatnonzero(np.isin(fine, list(pos)))
        labels = np.array([pos[int(f)] for f in fine[rows]], dtype=np.int64)
        order = np.argsort(labels, kind="stable")
        rows, labels = rows[order], labels[order]
        where = str(self._folder / "{train,test}")
        return SourceSplit(classes, labels, lambda i: images[rows[i]],
                           [f"{where} (class {c})" for c in classes])
