"""The common layer of the real-dataset readers: decode once, cache compactly, load in seconds.

A reader (:class:`CachedDataset` subclass) knows one benchmark's on-disk layout(s). The first
time a dataset is built at a given image size, every image is decoded, converted (RGB or
grey) and resized once with PIL, then written per split as uint8 ``[N, C, H, W]`` ``.npy``
files (memory-mappable) with int64 labels, next to a ``manifest.json`` that records counts,
class names, the image size, the source layout and the sha256 of every cache file::

    <cache_dir or ROOT/.lil_cache>/<name>-<size>px/
        manifest.json  train_images.npy  train_labels.npy  val_images.npy  ...

Later builds verify the checksums and memory-map the arrays: training never decodes an image.
A cache whose checksum does not match is rebuilt (one line is printed). Every file is written
to a temporary name and moved into place (:mod:`engine.fileio`); the manifest goes last, so an
interrupted preparation leaves no cache that looks complete.

Readers raise :class:`DataError` with one line naming the file and what was expected (missing
root or file, unsupported layout, truncated pickle, unreadable image, too-small class); the
helpers of :mod:`datasets.source` (:func:`load_pickle`, :func:`open_image`, :func:`require`)
do the wrapping.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lil_meta.datasets.sampler import SPLITS, SplitData
from lil_meta.datasets.source import SourceSplit, split_classes, to_array
from lil_meta.engine.errors import ConfigError, DataError
from lil_meta.engine.fileio import atomic_path, atomic_write

__all__ = ["CachedDataset", "SplitFileDataset", "file_digest", "CACHE_VERSION", "SPLITS"]

CACHE_VERSION = 1
_HASH_CHUNK = 1 << 22


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a small file (e.g. a split JSON) for :meth:`CachedDataset.cache_params`, or its
    path when it cannot be read (the reader reports that error when it needs the file)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return str(path)


class CachedDataset:
    """Base of the benchmark readers: ``split(name)`` → :class:`SplitData` from a verified cache.

    Subclasses set ``name``, ``default_size``, ``native_channels`` and ``layouts`` (a one-line
    description of each supported source layout) and implement :meth:`detect_layout` and
    :meth:`read_split`. They may override :meth:`transform` (e.g. Omniglot's rotations).

    Args:
        root: the folder holding the dataset as downloaded (config ``data.root``; required).
        image_size: side of the square images in the cache (default per dataset).
        channels: 3 (RGB) or 1 (grey); converted on load from what the cache stores.
        cache_dir: where caches live (default ``ROOT/.lil_cache``).
        min_per_class: a class with fewer images is an error naming its file/folder.
        rebuild: decode again even if a valid cache exists.
        progress: show a tqdm bar while preparing.
        verify: check the cache files' sha256 on load (a few seconds per GB).
    """

    name = "dataset"
    default_size = 84
    native_channels = 3
    layouts: Sequence[str] = ()

    def __init__(self, root: str | None = None, image_size: int | None = None,
                 channels: int | None = None, cache_dir: str | None = None,
                 min_per_class: int = 1, rebuild: bool = False, progress: bool = True,
                 verify: bool = True) -> None:
        if root in (None, "", "???"):
            raise ConfigError(f"data.root: required for dataset '{self.name}': the folder that "
                              f"holds it (supported layouts: {'; '.join(self.layouts)}); see "
                              f"docs/datasets.md")
        size = self.default_size if image_size is None else image_size
        if int(size) != size or size < 8:
            raise ConfigError(f"data.image_size: expected an integer >= 8, got {image_size!r}")
        channels = self.native_channels if channels is None else channels
        if channels not in (1, 3):
            raise ConfigError(f"data.channels: {self.name} supports 1 or 3 channels, got {channels!r}")
        if int(min_per_class) != min_per_class or min_per_class < 1:
            raise ConfigError(f"data.args.min_per_class: expected an integer >= 1, got {min_per_class!r}")
        self.root = Path(str(root)).expanduser()
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root not found (data.root for '{self.name}'); "
                            f"expected a folder with one of: {'; '.join(self.layouts)}")
        self.image_size, self.channels = int(size), int(channels)
        self.min_per_class, self.progress, self.verify = int(min_per_class), progress, verify
        base = Path(cache_dir).expanduser() if cache_dir else self.root / ".lil_cache"
        self.cache_path = base / f"{self.name}-{self.image_size}px"
        self.manifest = self._ensure_cache(rebuild)
        self._splits: dict[str, SplitData] = {}

    # ---- hooks -------------------------------------------------------------------------------
    def detect_layout(self) -> str:
        """The name of the source layout found under ``self.root``; DataError listing ``layouts`` if none."""
        raise NotImplementedError

    def read_split(self, layout: str, split: str) -> SourceSplit:
        raise NotImplementedError

    def transform(self, split: str, images: torch.Tensor, labels: torch.Tensor):
        """Applied on load (after the cache); the identity by default."""
        return images, labels

    def cache_params(self) -> dict[str, Any]:
        """Reader settings that change the cache contents (a mismatch rebuilds it)."""
        return {}

    # ---- cache ---------------------------------------------------------------------------------
    def unsupported_layout(self, missing: str = "") -> DataError:
        detail = f" ({missing})" if missing else ""
        return DataError(f"{self.root}: no supported {self.name} layout found{detail}; supported: "
                         f"{'; '.join(self.layouts)}")

    def find_base(self, bases: Sequence[Path], parts: Sequence[str | Path],
                  present: Callable[[Path], bool] = Path.exists) -> Path:
        """The first of ``bases`` in which every one of ``parts`` is ``present``.

        A base holding only some of them is an :meth:`unsupported_layout` naming the first
        missing one; a root where no base holds any lists the supported layouts.
        """
        for base in bases:
            found = [present(base / part) for part in parts]
            if all(found):
                return base
            if any(found):
                raise self.unsupported_layout(f"{base / parts[found.index(False)]} is missing")
        raise self.unsupported_layout()

    def _expected(self) -> dict[str, Any]:
        return {"version": CACHE_VERSION, "dataset": self.name, "image_size": self.image_size,
                "channels": self.native_channels, "params": self.cache_params()}

    def _ensure_cache(self, rebuild: bool) -> dict[str, Any]:
        path = self.cache_path / "manifest.json"
        if path.is_file() and not rebuild:
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError):
                manifest = None
            if isinstance(manifest, dict) and all(manifest.get(k) == v for k, v in self._expected().items()):
                bad = self._check(manifest) if self.verify else None
                if bad is None:
                    return manifest
                print(f"{self.name}: cache file {bad} is corrupt (checksum mismatch); rebuilding "
                      f"{self.cache_path}", flush=True)
        return self._build()

    def _check(self, manifest: dict[str, Any]) -> str | None:
        """The first cache file that is missing or fails its checksum, else None."""
        splits = manifest.get("splits")
        if not isinstance(splits, dict) or set(splits) != set(SPLITS):
            return str(self.cache_path / "manifest.json")
        for info in splits.values():
            try:
                names, sums = (info["images"], info["labels"]), info["sha256"]
                for fname in names:
                    f = self.cache_path / fname
                    if not f.is_file() or _sha256(f) != sums.get(fname):
                        return str(f)
            except (TypeError, KeyError, AttributeError):
                return str(self.cache_path / "manifest.json")
        return None

    def _build(self) -> dict[str, Any]:
        layout = self.detect_layout()
        try:
            self.cache_path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.cache_path):
                pass
        except OSError as exc:
            raise DataError(f"{self.cache_path}: cannot write the {self.name} cache there "
                            f"({exc.strerror or exc}); data.args.cache_dir (or --cache-dir) must be a "
                            "writable folder (default: DATA_ROOT/.lil_cache)") from None
        print(f"{self.name}: preparing {self.image_size}px cache in {self.cache_path} from "
              f"{self.root} ({layout}; first run only)", flush=True)
        splits = {}
        for split in SPLITS:
            src = self.read_split(layout, split)
            splits[split] = self._write_split(split, src)
        manifest = {**self._expected(), "layout": layout, "source": str(self.root.resolve()),
                    "splits": splits}
        atomic_write(self.cache_path / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        return manifest

    def _write_split(self, split: str, src: SourceSplit) -> dict[str, Any]:
        labels = np.asarray(src.labels, dtype=np.int64)
        sizes = np.bincount(labels, minlength=len(src.classes)) if len(labels) else np.zeros(
            len(src.classes), dtype=np.int64)
        if len(src.classes) == 0:
            raise DataError(f"{self.root}: the {split} split of {self.name} has no classes")
        small = np.flatnonzero(sizes < self.min_per_class)
        if len(small):
            c = int(small[0])
            where = src.class_sources[c] if src.class_sources else f"class '{src.classes[c]}'"
            raise DataError(f"{where}: class '{src.classes[c]}' ({split}) has {int(sizes[c])} "
                            f"images; expected >= {self.min_per_class} (data.args.min_per_class)")
        n, c, s = len(labels), self.native_channels, self.image_size
        img_name, lab_name = f"{split}_images.npy", f"{split}_labels.npy"
        img_path = self.cache_path / img_name
        with atomic_path(img_path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, c, s, s))
            for i in self._progress(range(n), f"{self.name}/{split}"):
                out[i] = to_array(src.fetch(i), s, c)
            out.flush()
            del out
        atomic_write(self.cache_path / lab_name, lambda f: np.save(f, labels))
        return {"images": img_name, "labels": lab_name, "count": n, "classes": len(src.classes),
                "class_names": list(src.classes),
                "sha256": {img_name: _sha256(img_path),
                           lab_name: _sha256(self.cache_path / lab_name)}}

    def _progress(self, it, desc: str):
        if not self.progress:
            return it
        from tqdm import tqdm

        return tqdm(it, desc=desc, unit="img", dynamic_ncols=True, mininterval=0.5)

    # ---- loading -------------------------------------------------------------------------------
    def split(self, name: str) -> SplitData:
        if name not in SPLITS:
            raise DataError(f"{self.name}: unknown split '{name}' (available: {', '.join(SPLITS)})")
        if name not in self._splits:
            info = self.manifest["splits"][name]
            # copy-on-write memory map: pages are read on first use, nothing is decoded
            images = torch.from_numpy(np.load(self.cache_path / info["images"], mmap_mode="c"))
            labels = torch.from_numpy(np.load(self.cache_path / info["labels"]))
            images, labels = self.transform(name, images, labels)
            if self.channels != images.shape[1]:
                if self.channels == 3:
                    images = images.expand(-1, 3, -1, -1)
                else:  # ITU-R 601 luma
                    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
                    images = (images.float() * w).sum(1, keepdim=True).round_().to(torch.uint8)
            self._splits[name] = SplitData(images, labels, f"{self.name}/{name}")
        return self._splits[name]

    def summary(self) -> str:
        """A few lines describing the cache (used by tools/prepare_data.py)."""
        m = self.manifest
        lines = [f"{self.name}: {m['layout']} layout from {m['source']}",
                 f"cache: {self.cache_path} ({m['image_size']}px, {m['channels']} channel(s))"]
        for split, info in m["splits"].items():
            size = sum((self.cache_path / f).stat().st_size for f in (info["images"], info["labels"]))
            lines.append(f"  {split:5s}: {info['classes']:5d} classes {info['count']:8d} images "
                         f"{size / 2**20:9.1f} MiB  sha256 {info['sha256'][info['images']][:12]}")
        return "\n".join(lines)


class SplitFileDataset(CachedDataset):
    """A reader whose classes are split by a JSON file of class-name lists: ``split_file``, or
    the reader's shipped ``default_split`` when unset. The file's sha256 is a cache parameter,
    so editing the split rebuilds the cache.

    Args:
        split_file: path of a JSON with ``train``/``val``/``test`` lists of class names.
        **kwargs: the arguments of :class:`CachedDataset`.
    """

    default_split: Path

    def __init__(self, root: str | None = None, image_size: int | None = None,
                 channels: int | None = None, split_file: str | None = None, **kwargs) -> None:
        self.split_file = Path(split_file) if split_file else self.default_split
        super().__init__(root, image_size, channels, **kwargs)

    def cache_params(self) -> dict[str, Any]:
        return {"split_file": file_digest(self.split_file)}

    def split_classes(self, split: str, available: Sequence[str], source: str) -> list[str]:
        """:func:`split_classes` of this reader's split file."""
        return split_classes(self.split_file, split, available, source)
