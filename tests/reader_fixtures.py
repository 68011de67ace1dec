"""Tiny fixtures in each real dataset layout, built on the fly for the reader tests."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from lil_meta.datasets.cifar_fs import DEFAULT_SPLIT
from lil_meta.datasets.cub import DEFAULT_SPLIT as CUB_SPLIT
from lil_meta.datasets.fc100 import DEFAULT_SPLIT as FC100_SPLIT
from lil_meta.datasets.fgvc_aircraft import DEFAULT_SPLIT as AIRCRAFT_SPLIT

QUIET = {"progress": False}
RNG = np.random.default_rng(0)


def rand_images(n: int, size: int = 12) -> np.ndarray:
    return RNG.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def dump(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))
    return path


def png_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def one_line(exc: BaseException) -> str:
    """The message, asserting it is one line that hides any pickle/PIL exception behind it."""
    msg = str(exc)
    assert "\n" not in msg and "Traceback" not in msg
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    return msg


# ---- fixtures ------------------------------------------------------------------------------

MINI_CLASSES = {"train": 4, "val": 2, "test": 3}


def make_mini_pickle(root: Path, per_class: int = 3, size: int = 12) -> dict:
    arrays = {}
    for split, k in MINI_CLASSES.items():
        images = rand_images(k * per_class, size)
        order = RNG.permutation(len(images))  # class rows interleaved in the file
        class_dict = {f"n{split}{c:02d}": sorted(order[c::k].tolist()) for c in range(k)}
        dump(root / f"mini-imagenet-cache-{split}.pkl", {"image_data": images, "class_dict": class_dict})
        arrays[split] = (images, class_dict)
    return arrays


def make_mini_csv(root: Path, per_class: int = 3, size: int = 12) -> dict:
    (root / "images").mkdir(parents=True)
    arrays = {}
    for split, k in MINI_CLASSES.items():
        lines, imgs = ["filename,label"], {}
        for c in range(k):
            for j in range(per_class):
                name = f"{split}{c}_{j}.png"
                imgs[name] = rand_images(1, size)[0]
                Image.fromarray(imgs[name]).save(root / "images" / name)
                lines.append(f"{name},n{split}{c:02d}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
        arrays[split] = imgs
    return arrays


CIFAR_NAMES = sorted(json.loads(DEFAULT_SPLIT.read_text())["train"]
                     + json.loads(DEFAULT_SPLIT.read_text())["val"]
                     + json.loads(DEFAULT_SPLIT.read_text())["test"])


# the 20 real CIFAR-100 superclasses, sorted; fixture fine class c (CIFAR_NAMES[c]) is put in
# superclass c // 5 (not the real grouping, which the readers read from the data)
COARSE_NAMES = sorted(n for split in ("train", "val", "test")
                      for n in json.loads(FC100_SPLIT.read_text())[split])


def make_cifar(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """cifar-100-python/{train,test,meta}: 3 tiny images per fine class (2 train, 1 test), with
    ``coarse_labels`` (fine class // 5) and the real ``coarse_label_names``."""
    folder = root / "cifar-100-python"
    all_x, all_y = [], []
    for part, per_class in (("train", 2), ("test", 1)):
        y = np.repeat(np.arange(100), per_class)
        y = y[RNG.permutation(len(y))]
        x = RNG.integers(0, 256, (len(y), 3072), dtype=np.uint8)
        dump(folder / part, {"data": x, "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()})
        all_x.append(x)
        all_y.append(y)
    dump(folder / "meta", {"fine_label_names": CIFAR_NAMES, "coarse_label_names": COARSE_NAMES})
    return np.concatenate(all_x), np.concatenate(all_y)


def make_omniglot(root: Path, chars=(("background", "Alpha", 3), ("evaluation", "Beta", 2),
                                     ("evaluation", "Gamma", 1)), per_char: int = 3) -> None:
    for folder, alphabet, n in chars:
        for c in range(n):
            d = root / f"images_{folder}" / alphabet / f"character{c + 1:02d}"
            d.mkdir(parents=True)
            for j in range(per_char):
                img = np.full((20, 20), 255, dtype=np.uint8)  # white paper
                img[2 + c : 8 + c, 3 + j : 5 + j] = 0  # a black stroke, off-centre (rotations differ)
                Image.fromarray(img).convert("1").save(d / f"{c:04d}_{j:02d}.png")


def make_tiered(root: Path, layout: str, size: int = 12) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, k in (("train", 4), ("val", 2), ("test", 3)):
        specific = np.repeat(np.arange(10, 10 + k) * 3, 2)[::-1].copy()  # sparse ids, reversed
        images = rand_images(len(specific), size)
        names = [f"s{i}" for i in range(10 + 3 * k + 30)]
        dump(root / f"{split}_labels.pkl", {"label_specific": specific,
                                            "label_general": np.zeros_like(specific),
                                            "label_specific_str": names})
        if layout == "png-pickle":
            dump(root / f"{split}_images_png.pkl", [png_bytes(a) for a in images])
        else:
            np.savez(root / f"{split}_images.npz", images=images)
        out[split] = (images, specific)
    return out


# the 200 real CUB class folders ("001.Black_footed_Albatross" ...), in class-id (= sorted) order
CUB_NAMES = sorted(n for split in ("train", "val", "test")
                   for n in json.loads(CUB_SPLIT.read_text())[split])


def make_cub(root: Path, num_classes: int = 200, per_class: int = 1, size: int = 12) -> list[str]:
    """CUB_200_2011/ with the first ``num_classes`` real class folders (all 200 by default, so
    the shipped split applies) and ``per_class`` tiny images each; returns the folder names."""
    base = root / "CUB_200_2011"
    classes, images, labels = [], [], []
    for c, name in enumerate(CUB_NAMES[:num_classes]):
        classes.append(f"{c + 1} {name}")
        (base / "images" / name).mkdir(parents=True)
        for j in range(per_class):
            rel = f"{name}/{name[4:]}_{j}.jpg"
            Image.fromarray(rand_images(1, size)[0]).save(base / "images" / rel)
            images.append(f"{len(images) + 1} {rel}")
            labels.append(f"{len(labels) + 1} {c + 1}")
    (base / "classes.txt").write_text("\n".join(classes) + "\n")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return [c.split()[1] for c in classes]


# the 100 FGVC-Aircraft variants of the shipped split, in the split file's order
AIRCRAFT_NAMES = [n for split in ("train", "val", "test")
                  for n in json.loads(AIRCRAFT_SPLIT.read_text())[split]]


def make_aircraft(root: Path, per_class: int = 2, size: int = 12) -> list[str]:
    """fgvc-aircraft-2013b/data/ with images/, variants.txt and images_variant_*.txt: every
    variant of the shipped split, ``per_class`` tiny images each, spread over the three lists."""
    base = root / "fgvc-aircraft-2013b" / "data"
    (base / "images").mkdir(parents=True)
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    n = 0
    for variant in AIRCRAFT_NAMES:
        for j in range(per_class):
            n += 1
            image_id = f"{1000000 + n:07d}"
            Image.fromarray(rand_images(1, size)[0]).save(base / "images" / f"{image_id}.jpg")
            lists[("train", "val", "test")[(n + j) % 3]].append(f"{image_id} {variant}")
    (base / "variants.txt").write_text("\n".join(sorted(AIRCRAFT_NAMES)) + "\n")
    for part, lines in lists.items():
        (base / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    return AIRCRAFT_NAMES
