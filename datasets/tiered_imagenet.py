"""``tiered_imagenet``: tieredImageNet (Ren et al., ICLR 2018), 351/97/160 classes.

Two source layouts (the split and the classes come from the files):

- ``png-pickle`` (the original release): ``{train,val,test}_images_png.pkl``, each a list of
  PNG-encoded byte strings, with ``{split}_labels.pkl``, a dict with ``label_specific`` (the
  fine class of each image; used as the label), ``label_general``, ``label_specific_str``...
- ``npz`` (the common repackaging): ``{split}_images.npz`` with key ``images`` (uint8
  ``[N, 84, 84, 3]``) and the same ``{split}_labels.pkl``. The whole array is loaded while the
  cache is prepared (about 9.5 GB for train), so prepare it on a machine with the memory.

Labels are the sorted distinct ``label_specific`` values renumbered ``0..K-1``; class names
come from ``label_specific_str`` when present.
"""

from __future__ import annotations

import zipfile

import numpy as np

from lil_meta.datasets.cache import CachedDataset
from lil_meta.datasets.source import (
    SourceSplit,
    hwc_uint8,
    load_pickle,
    load_pickled_dict,
    open_image,
    require,
)
from lil_meta.engine.errors import DataError
from lil_meta.engine.registry import DATASETS

__all__ = ["TieredImageNet"]

_LABELS_WHAT = "a pickled dict with 'label_specific' (the fine class of each image)"


@DATASETS.register("tiered_imagenet")
class TieredImageNet(CachedDataset):
    """tieredImageNet (module docstring); arguments as :class:`CachedDataset`."""

    name = "tiered_imagenet"
    default_size = 84
    native_channels = 3
    layouts = ("png-pickle: {train,val,test}_images_png.pkl + {split}_labels.pkl",
               "npz: {train,val,test}_images.npz (key 'images') + {split}_labels.pkl")

    def detect_layout(self) -> str:
        if (self.root / "train_images_png.pkl").exists():
            return "png-pickle"
        if (self.root / "train_images.npz").exists():
            return "npz"
        raise self.unsupported_layout()

    def _labels(self, split: str) -> tuple[np.ndarray, list[str], str]:
        path = self.root / f"{split}_labels.pkl"
        meta = load_pickled_dict(path, _LABELS_WHAT, ("label_specific",))
        raw = np.asarray(meta["label_specific"]).astype(np.int64).ravel()
        ids, labels = np.unique(raw, return_inverse=True)
        names = meta.get("label_specific_str")
        if names is not None and len(names) > int(ids.max(initial=-1)):
            classes = [str(names[i]) for i in ids]
        else:
            classes = [str(i) for i in ids]
        return labels.astype(np.int64), classes, str(path)

    def read_split(self, layout: str, split: str) -> SourceSplit:
        labels, classes, label_path = self._labels(split)
        if layout == "png-pickle":
            path = self.root / f"{split}_images_png.pkl"
            data = load_pickle(path, "a pickled list of PNG-encoded byte strings")
            if not isinstance(data, list | tuple) or (data and not isinstance(
                    data[0], bytes | bytearray | np.ndarray)):
                raise DataError(f"{path}: expected a pickled list of PNG-encoded byte strings, "
                                f"got {type(data).__name__}")

            def fetch(i: int):
                raw = data[i]
                raw = raw.tobytes() if isinstance(raw, np.ndarray) else raw
                return open_image(bytes(raw), f"{path} (image {i})")
        else:
            path = self.root / f"{split}_images.npz"
            require(path, "an .npz archive with key 'images' (uint8 [N, 84, 84, 3])")
            try:
                with np.load(path) as archive:
                    if "images" not in archive.files:
                        raise DataError(f"{path}: expected key 'images', found {archive.files}")
                    images = archive["images"]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"{path}: cannot read npz ({type(exc).__name__}: {exc}); "
                                f"expected key 'images' (uint8 [N, 84, 84, 3])") from None
            data = images = hwc_uint8(images, path, "images")

            def fetch(i: int):
                return images[i]
        if len(data) != len(labels):
            raise DataError(f"{path}: {len(data)} images but {label_path} has {len(labels)} labels")
        return SourceSplit(classes, labels, fetch, [f"{label_path} (class {c})" for c in classes])
