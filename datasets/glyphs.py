"""``glyphs``: a procedural, Omniglot-like dataset that needs no download.

Each class is a glyph template of 2–4 random cubic Bézier strokes (open curves, loops or dots).
Each image of a class is its template under a random affine map (rotation, scale, shear,
translation) plus a smooth elastic warp, drawn with a random stroke width and pixel noise:
white strokes on black. Classes are easy to tell apart for a network that learns to ignore
these nuisances and hard for raw-pixel matching, which is what a few-shot benchmark needs.

Generation is vectorised: every template is rendered once as a distance field; each instance
resamples that field through its warp (``affine_grid`` + ``grid_sample``) and maps distance to
ink with ``sigmoid((width - distance) / softness)``. The result is cached under ``root`` in a
file named by a hash of every generation parameter, so it is generated once per setting; a
``.sha256`` file beside it holds the checksum of its bytes, checked the first time a process
opens it (docs/performance.md gives the cost), and a cache that fails it, cannot be read or
has no checksum is regenerated with a warning.
Train, val and test classes are consecutive template ids from one seeded generator, hence
disjoint, and the bytes depend only on the parameters.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lil_meta.datasets.sampler import SPLITS, SplitData
from lil_meta.engine.errors import ConfigError, DataError
from lil_meta.engine.fileio import atomic_write
from lil_meta.engine.registry import DATASETS

__all__ = ["Glyphs", "SPLITS"]

_VERSION = 2
_VERIFIED: dict[Path, tuple] = {}
"""Cache files whose checksum this process has checked, with their (size, mtime, inode) then."""


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
_STROKES, _SEGMENTS = 4, 16
_CHUNK = 64
_STROKE_UNIT = 2.0 / 28
"""Half stroke width scale: one pixel of a 28-px image, so larger images show the same glyphs."""


def _bezier_segments(ctrl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Polyline approximation of cubic Béziers ``[..., 4, 2]`` → segment ends ``[..., S, 2]`` twice."""
    t = torch.linspace(0, 1, _SEGMENTS + 1).view(-1, 1)
    basis = torch.cat([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], dim=1)
    pts = torch.einsum("pk,...kd->...pd", basis, ctrl)
    return pts[..., :-1, :], pts[..., 1:, :]


def _templates(n: int, gen: torch.Generator) -> torch.Tensor:
    """Control points ``[n, strokes, 4, 2]`` of ``n`` glyphs, centred and scaled to radius 0.6.

    Each glyph uses 2–4 strokes; a stroke is an open cubic curve (77%), a loop that returns to
    its start (15%) or a dot (8%). Unused strokes are moved far outside the image.
    """
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    start = u(n, _STROKES, 1, 2) * 1.2 - 0.6
    steps = (u(n, _STROKES, 3, 2) * 2 - 1) * 0.55
    ctrl = torch.cat([start, start + torch.cumsum(steps, dim=2)], dim=2)
    kind = u(n, _STROKES, 1, 1)
    loop = kind < 0.15
    ctrl[..., 3:, :] = torch.where(loop, ctrl[..., :1, :], ctrl[..., 3:, :])
    dot = (kind > 0.92).expand_as(ctrl)
    ctrl = torch.where(dot, start.expand_as(ctrl), ctrl)
    used = torch.arange(_STROKES) < torch.randint(2, _STROKES + 1, (n, 1), generator=gen)
    a, b = _bezier_segments(ctrl)
    w = used[:, :, None, None].float()
    centre = ((a + b) * w).sum(dim=(1, 2)) / (2 * _SEGMENTS * w.sum(dim=(1, 2)))
    ctrl = ctrl - centre[:, None, None, :]
    a = a - centre[:, None, None, :]
    radius = (a.abs() * w).amax(dim=(1, 2, 3)).clamp_min(0.05)
    ctrl = ctrl * (0.6 / radius).clamp(max=3.0)[:, None, None, None]
    return torch.where(used[:, :, None, None], ctrl, torch.full_like(ctrl, 50.0))


def _distance_fields(ctrl: torch.Tensor, res: int) -> torch.Tensor:
    """Distance from each pixel centre of a ``res``² grid on [-1, 1]² to each glyph: ``[n, 1, res, res]``."""
    a, b = _bezier_segments(ctrl)
    a, b = a.flatten(1, 2), b.flatten(1, 2)
    coords = (torch.arange(res) + 0.5) * (2.0 / res) - 1.0
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    gx, gy = gx.reshape(1, 1, -1), gy.reshape(1, 1, -1)
    out = []
    for lo in range(0, len(a), 4):
        sa, sb = a[lo : lo + 4, :, None, :], b[lo : lo + 4, :, None, :]
        abx, aby = sb[..., 0] - sa[..., 0], sb[..., 1] - sa[..., 1]
        inv = 1.0 / (abx * abx + aby * aby).clamp_min(1e-12)
        px, py = gx - sa[..., 0], gy - sa[..., 1]
        t = torch.addcmul(px * abx, py, aby).mul_(inv).clamp_(0.0, 1.0)
        px.addcmul_(t, abx, value=-1).square_()
        py.addcmul_(t, aby, value=-1).square_()
        out.append(px.add_(py).amin(dim=1).sqrt_())
    return torch.cat(out).view(-1, 1, res, res)


def _warps(n: int, size: int, distortion: float, gen: torch.Generator) -> torch.Tensor:
    """Sampling grids ``[n, size, size, 2]``: a random affine map plus a smooth elastic field."""
    u = lambda *shape: torch.rand(*shape, generator=gen) * 2 - 1  # noqa: E731
    angle = u(n) * math.radians(30) * distortion
    scale = torch.exp(u(n, 2) * 0.24 * distortion)
    shear = u(n) * 0.3 * distortion
    shift = u(n, 2) * 0.26 * distortion
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shr = torch.eye(2).repeat(n, 1, 1)
    shr[:, 0, 1] = shear
    lin = rot @ shr * scale[:, None, :]
    theta = torch.cat([lin, shift[:, :, None]], dim=2)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    coarse = torch.randn(n, 2, 4, 4, generator=gen) * 0.084 * distortion
    elastic = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    return grid + elastic.permute(0, 2, 3, 1)


def generate(num_classes: Sequence[int], per_class: int, image_size: int, seed: int,
             distortion: float, noise: float) -> np.ndarray:
    """All images ``uint8 [sum(num_classes), per_class, image_size, image_size]``, class-major.

    Runs on one thread: the work is many mid-sized tensor ops, which run several times slower
    when intra-op threads compete with another busy process on the same cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _generate(num_classes, per_class, image_size, seed, distortion, noise)
    finally:
        torch.set_num_threads(threads)


def _generate(num_classes: Sequence[int], per_class: int, image_size: int, seed: int,
              distortion: float, noise: float) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    total = int(sum(num_classes))
    res = max(image_size, 64)
    fields = _distance_fields(_templates(total, gen), res)
    out = np.empty((total, per_class, image_size, image_size), dtype=np.uint8)
    pixel = 2.0 / image_size
    for lo in range(0, total, _CHUNK):
        hi = min(lo + _CHUNK, total)
        n = (hi - lo) * per_class
        src = fields[lo:hi].repeat_interleave(per_class, dim=0)
        dist = F.grid_sample(src, _warps(n, image_size, distortion, gen), mode="bilinear",
                             padding_mode="border", align_corners=False)
        width = _STROKE_UNIT * (0.55 + 0.9 * torch.rand(n, 1, 1, 1, generator=gen))
        ink = torch.sigmoid((width - dist) / (0.45 * pixel))
        ink = ink + noise * torch.randn(ink.shape, generator=gen)
        img = (ink.clamp_(0.0, 1.0) * 255.0).round_().to(torch.uint8)
        out[lo:hi] = img.view(hi - lo, per_class, image_size, image_size).numpy()
    return out


@DATASETS.register("glyphs")
class Glyphs:
    """The procedural glyph dataset; ``split(name)`` gives ``train``, ``val`` or ``test`` as :class:`SplitData`.

    Args:
        root: cache directory.
        image_size, channels: image shape (``channels=3`` replicates the grey image).
        seed: generation seed; same parameters give identical bytes.
        num_classes: ``(train, val, test)`` class counts; overrides the three ``*_classes``.
        per_class: images per class.
        distortion: scales every geometric nuisance (rotation ±30°, per-axis scale ×e^±0.24,
            shear ±0.3, shift ±13% of the image, elastic warp). At 1.0, raw-pixel
            nearest-class-mean scores about 47% on 5-way 5-shot test tasks while a MAML Conv4
            reaches about 95%: the difficulty is nuisance variation, not look-alike classes.
        noise: standard deviation of the additive Gaussian pixel noise (ink in [0, 1]).
    """

    def __init__(self, root: str = ".cache/glyphs", image_size: int = 28, channels: int = 1,
                 seed: int = 0, num_classes: Sequence[int] | None = None, train_classes: int = 1000,
                 val_classes: int = 200, test_classes: int = 400, per_class: int = 20,
                 distortion: float = 1.0, noise: float = 0.1) -> None:
        counts = (train_classes, val_classes, test_classes) if num_classes is None else tuple(num_classes)
        if len(counts) != 3 or any(int(c) != c or c < 1 for c in counts):
            raise ConfigError(f"data.num_classes: expected 3 positive integers (train, val, test), got {counts}")
        for key, value, low in (("image_size", image_size, 8), ("per_class", per_class, 1)):
            if int(value) != value or value < low:
                raise ConfigError(f"data.{key}: expected an integer >= {low}, got {value!r}")
        if channels not in (1, 3):
            raise ConfigError(f"data.channels: glyphs supports 1 or 3 channels, got {channels!r}")
        if distortion < 0 or noise < 0:
            raise ConfigError(f"data: distortion and noise must be >= 0, got {distortion}, {noise}")
        params = {"version": _VERSION, "num_classes": [int(c) for c in counts],
                  "per_class": int(per_class), "image_size": int(image_size), "seed": int(seed),
                  "distortion": float(distortion), "noise": float(noise)}
        digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
        self.path = Path(root or ".cache/glyphs") / f"glyphs-{int(image_size)}px-{digest}.npy"
        self.params = params
        self.generated = False
        images = torch.from_numpy(self._load_or_generate())
        self.splits: dict[str, SplitData] = {}
        start = 0
        for name, count in zip(SPLITS, params["num_classes"], strict=True):
            block = images[start : start + count].flatten(0, 1).unsqueeze(1)
            labels = torch.arange(count).repeat_interleave(int(per_class))
            self.splits[name] = SplitData(block.expand(-1, channels, -1, -1), labels, f"glyphs/{name}")
            start += count

    def _load_or_generate(self) -> np.ndarray:
        p = self.params
        shape = (sum(p["num_classes"]), p["per_class"], p["image_size"], p["image_size"])
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise DataError(f"{self.path.parent}: data.root is a file; glyphs keeps its cache in a folder there")
        if self.path.is_dir():
            raise DataError(f"{self.path}: the glyphs cache path is a folder; remove it or set another "
                            "data.root (the cache folder)")
        if self.path.exists():
            data, problem = self._read_cache(shape)
            if data is not None:
                return data
            print(f"warning: glyphs cache {self.path} {problem}; regenerating it", file=sys.stderr, flush=True)
        else:
            print(f"generating glyphs cache {self.path} (first run only)", flush=True)
        self.generated = True
        data = generate(p["num_classes"], p["per_class"], p["image_size"], p["seed"],
                        p["distortion"], p["noise"])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda f: np.save(f, data))
            atomic_write(_checksum_path(self.path), _file_sha256(self.path) + "\n")
        except OSError as exc:
            raise DataError(f"{self.path.parent}: cannot write the glyphs cache there ({exc.strerror or exc}); "
                            "data.root must be a writable folder") from None
        _VERIFIED[self.path] = _stat_key(self.path)
        return data

    def _read_cache(self, shape) -> tuple[np.ndarray | None, str]:
        """The cached images, or ``None`` and what is wrong with the file. Its sha256 is checked
        against the ``.sha256`` file beside it once per process (about 2 ms per MB)."""
        key = _stat_key(self.path)
        if _VERIFIED.get(self.path) != key:
            try:
                expected = _checksum_path(self.path).read_text().strip()
            except (OSError, UnicodeDecodeError):
                return None, "has no readable checksum file"
            if _file_sha256(self.path) != expected:
                return None, "fails its checksum (the file was changed)"
        try:
            data = np.load(self.path)
        except Exception as exc:  # noqa: BLE001  (EOFError, ValueError, pickle errors ...: a bad file)
            return None, f"cannot be read ({type(exc).__name__})"
        if data.shape != shape or data.dtype != np.uint8:
            return None, f"holds {data.dtype} {data.shape}, not uint8 {shape}"
        _VERIFIED[self.path] = key
        return data, ""

    def split(self, name: str) -> SplitData:
        if name not in self.splits:
            raise DataError(f"glyphs: unknown split '{name}' (available: {', '.join(SPLITS)})")
        return self.splits[name]
