"""``omniglot``: Omniglot (Lake et al. 2015) with the usual few-shot protocol.

Source: ``images_background/`` and ``images_evaluation/`` (``alphabet/character/*.png``), as
unpacked from the official zips (``ROOT/omniglot-py/``, torchvision's folder, also works).

What is implemented, exactly:

- The pool is every character of both folders (1623 in the real data), ordered by
  ``(folder, alphabet, character)`` with folders in the order background, evaluation, and
  names sorted. The first ``num_train`` (default 1100) characters are train, the next
  ``num_val`` (100) val, the rest (423) test. Like Vinyals et al. (2016) and Finn et al.
  (2017) the pool ignores the background/evaluation division, and 1200 characters are used
  for meta-training (train + val here); unlike Finn et al. the order is sorted, not shuffled
  with ``random.seed(1)``, so the split does not depend on a Python RNG.
- Images are 105×105 black strokes on white; they are inverted (bright strokes on black, the
  convention of the built-in glyphs) and resized to 28×28 (LANCZOS), one grey channel.
- ``rotations=True`` (default) adds rotations by 90°, 180° and 270° as new classes in every
  split (Santoro et al. 2016): a split of ``n`` characters has ``4n`` classes, class
  ``k*n + c`` being character ``c`` rotated by ``k*90°``. Rotations are applied on load; the
  cache holds the unrotated characters.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import ImageOps

from lil_meta.datasets.cache import CachedDataset
from lil_meta.datasets.source import SourceSplit, file_split
from lil_meta.engine.errors import ConfigError, DataError
from lil_meta.engine.registry import DATASETS

__all__ = ["Omniglot"]

_FOLDERS = ("images_background", "images_evaluation")


@DATASETS.register("omniglot")
class Omniglot(CachedDataset):
    """Omniglot (module docstring); ``num_train``, ``num_val``, ``rotations`` plus the arguments
    of :class:`CachedDataset`."""

    name = "omniglot"
    default_size = 28
    native_channels = 1
    layouts = ("images_background/ + images_evaluation/ (alphabet/character/*.png), "
               "directly under ROOT or in ROOT/omniglot-py/",)

    def __init__(self, root: str | None = None, image_size: int | None = None,
                 channels: int | None = None, num_train: int = 1100, num_val: int = 100,
                 rotations: bool = True, **kwargs) -> None:
        for key, value in (("num_train", num_train), ("num_val", num_val)):
            if int(value) != value or value < 1:
                raise ConfigError(f"data.args.{key}: expected a positive integer, got {value!r}")
        self.num_train, self.num_val, self.rotations = int(num_train), int(num_val), bool(rotations)
        self._chars: list | None = None
        super().__init__(root, image_size, channels, **kwargs)

    def cache_params(self) -> dict:
        return {"num_train": self.num_train, "num_val": self.num_val}

    def detect_layout(self) -> str:
        self._base = self.find_base((self.root, self.root / "omniglot-py"), _FOLDERS, Path.is_dir)
        return "images_background+images_evaluation"

    def _characters(self):
        if self._chars is None:
            chars = []
            for folder in _FOLDERS:
                for alphabet in sorted(p for p in (self._base / folder).iterdir() if p.is_dir()):
                    chars += sorted(p for p in alphabet.iterdir() if p.is_dir())
            need = self.num_train + self.num_val + 1
            if len(chars) < need:
                raise DataError(f"{self._base}: found {len(chars)} characters; the split needs "
                                f">= {need} (num_train {self.num_train} + num_val {self.num_val} "
                                f"+ at least one test character)")
            self._chars = chars
        return self._chars

    def read_split(self, layout: str, split: str) -> SourceSplit:
        chars = self._characters()
        lo, hi = {"train": (0, self.num_train),
                  "val": (self.num_train, self.num_train + self.num_val),
                  "test": (self.num_train + self.num_val, len(chars))}[split]
        chars = chars[lo:hi]
        return file_split([f"{ch.parent.name}/{ch.name}" for ch in chars],
                          [sorted(ch.glob("*.png")) for ch in chars], [str(ch) for ch in chars],
                          convert=lambda img: ImageOps.invert(img.convert("L")))

    def transform(self, split: str, images: torch.Tensor, labels: torch.Tensor):
        if not self.rotations:
            return images, labels
        n = int(labels.max()) + 1 if labels.numel() else 0
        images = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
        labels = torch.cat([labels + k * n for k in range(4)])
        return images, labels
