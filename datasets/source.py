"""Reading a benchmark's source files, for the readers of :mod:`datasets.cache`.

Each helper either returns what it read or raises one :class:`DataError` line naming the file
and what was expected: a missing file (:func:`require`), a truncated or foreign pickle
(:func:`load_pickle`), an image PIL cannot open (:func:`open_image`), a split JSON that names a
class the data lacks (:func:`split_classes`). :class:`SourceSplit` is a split as a reader
describes it before decoding; :func:`file_split` builds one from per-class file lists.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from lil_meta.engine.errors import DataError

__all__ = ["SourceSplit", "file_split", "hwc_uint8", "load_pickle", "load_pickled_dict", "load_split_file",
           "open_image", "require", "split_classes", "to_array"]


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else a :class:`DataError` saying what the file should have been."""
    if not path.exists():
        raise DataError(f"{path}: not found; expected {what}")
    return path


def load_pickle(path: Path, what: str) -> Any:
    """Unpickle ``path`` (Python 2 pickles too); any failure becomes one :class:`DataError` line."""
    require(path, what)
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as exc:  # any failure to unpickle (truncated, foreign, not a pickle)
        reason = "truncated" if isinstance(exc, EOFError) else f"{type(exc).__name__}: {exc}"
        raise DataError(f"{path}: cannot unpickle ({reason}); expected {what}") from None


def load_pickled_dict(path: Path, what: str, keys: Sequence[str]) -> dict:
    """:func:`load_pickle` of a dict that must hold ``keys``; otherwise one :class:`DataError`
    line saying what was expected and what keys (or type) were found."""
    data = load_pickle(path, what)
    if not isinstance(data, dict) or any(k not in data for k in keys):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: expected {what}; got {found}")
    return data


def hwc_uint8(array: Any, path: Path, key: str) -> np.ndarray:
    """``array`` as uint8 ``[N, H, W, 3]`` images, or a :class:`DataError` naming ``path``'s ``key``."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] != 3:
        raise DataError(f"{path}: '{key}' must be uint8 [N, H, W, 3], got {array.dtype} {array.shape}")
    return array


def open_image(source: Any, where: str) -> Image.Image:
    """A fully decoded PIL image from a path or encoded bytes; failures name ``where``."""
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes | bytearray) else source)
        img.load()
        return img
    except FileNotFoundError:
        raise DataError(f"{where}: image file not found") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{where}: image too large to decode ({exc}); expected a JPEG/PNG image of "
                        "ordinary size") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{where}: cannot decode image ({type(exc).__name__}: {exc}); "
                        f"expected a readable JPEG/PNG image") from None


def to_array(img: Image.Image | np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 ``[channels, size, size]`` from a PIL image or an HWC/HW uint8 array (resized with LANCZOS)."""
    if isinstance(img, np.ndarray):
        arr = img
        if arr.dtype == np.uint8 and arr.shape[:2] == (size, size) and (
                (channels == 3 and arr.ndim == 3 and arr.shape[2] == 3)
                or (channels == 1 and arr.ndim == 2)):
            return arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]
        img = Image.fromarray(np.ascontiguousarray(arr))
    img = img.convert("RGB" if channels == 3 else "L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.uint8)
    return arr.transpose(2, 0, 1) if channels == 3 else arr[None]


@dataclass
class SourceSplit:
    """One split as a reader describes it before decoding.

    ``labels[i]`` (``0..len(classes)-1``) is the class of image ``i``; ``fetch(i)`` returns
    image ``i`` as a PIL image or a uint8 HWC array (decoded lazily, one at a time).
    ``class_sources[c]`` names the file or folder behind class ``c`` for error messages.
    """

    classes: list[str]
    labels: np.ndarray
    fetch: Callable[[int], Image.Image | np.ndarray]
    class_sources: list[str] | None = None


def file_split(classes: Sequence[str], files: Sequence[Sequence[Path]],
               class_sources: list[str] | None = None,
               convert: Callable[[Image.Image], Image.Image] | None = None) -> SourceSplit:
    """A split of image files listed per class: class ``c`` is ``classes[c]`` with the files
    ``files[c]`` (taken in that order). Images are opened with :func:`open_image` (errors name
    the file) and passed through ``convert`` when given."""
    paths: list[Path] = []
    labels: list[int] = []
    for c, class_files in enumerate(files):
        paths += class_files
        labels += [c] * len(class_files)

    def fetch(i: int) -> Image.Image:
        img = open_image(paths[i], str(paths[i]))
        return convert(img) if convert is not None else img

    return SourceSplit(list(classes), np.array(labels, dtype=np.int64), fetch, class_sources)


def load_split_file(path: Path, split: str) -> list[str]:
    try:
        spec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found; expected JSON with 'train', 'val', "
                        f"'test' lists of class names") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read split JSON ({exc}); expected 'train', 'val', "
                        f"'test' lists of class names") from None
    names = spec.get(split) if isinstance(spec, dict) else None
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: expected a non-empty list of class names under '{split}'")
    return [str(n) for n in names]


def _name_key(name: str) -> str:
    """Case- and whitespace-insensitive form of a class name, for matching a split file's names."""
    return " ".join(str(name).split()).casefold()


def split_classes(split_file: Path, split: str, available: Sequence[str], source: str) -> list[str]:
    """The classes of ``split`` named in ``split_file`` (a JSON of class-name lists), in its
    order and spelled as in ``available`` (the class names found in the data). A name matches
    exactly or, failing that, up to case and runs of whitespace. ``source`` names the file that
    lists the data's classes, for the one-line :class:`DataError` when the JSON names a class
    that is not there (or names one twice)."""
    wanted = load_split_file(split_file, split)
    exact = set(available)
    loose: dict[str, list[str]] = {}
    for name in available:
        loose.setdefault(_name_key(name), []).append(name)
    chosen: list[str] = []
    for name in wanted:
        match = [name] if name in exact else loose.get(_name_key(name), [])
        if len(match) != 1:
            why = "matches several classes" if match else "is not"
            raise DataError(f"{split_file}: class '{name}' ({split}) {why} in {source} "
                            f"({len(available)} classes); the data does not match this split "
                            f"file (data.args.split_file selects another)")
        if match[0] in chosen:
            raise DataError(f"{split_file}: class '{name}' is listed twice under '{split}'")
        chosen.append(match[0])
    return chosen
