"""The Stanford Cars reader on a tiny devkit-shaped fixture written here with scipy.io.savemat:
this project's mod-4 class split, whole images, split_file, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import build_dataset
from datasets.cache import CachedDataset
from datasets.cars import Cars
from engine.errors import DataError
from engine.registry import DATASETS

scipy_io = pytest.importorskip("scipy.io")

QUIET = {"progress": False}
RNG = np.random.default_rng(1)
FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and "Traceback" not in msg
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    return msg


def make_cars(root: Path, num_classes: int = 8, per_class: int = 2, size: int = 14) -> list[str]:
    """ROOT/cars_train/*.jpg + devkit/{cars_train_annos,cars_meta}.mat; class names by id."""
    (root / "cars_train").mkdir(parents=True)
    (root / "devkit").mkdir()
    names = [f"Make{c} Model {2000 + c}" for c in range(num_classes)]
    rows = []
    n = 0
    for _ in range(per_class):  # images of different classes interleaved, as in the release
        for c in range(num_classes):
            n += 1
            fname = f"{n:05d}.jpg"
            Image.fromarray(RNG.integers(0, 256, (size, size + 3, 3), dtype=np.uint8)).save(
                root / "cars_train" / fname)
            rows.append((1, 2, size, size, c + 1, fname))
    annos = np.zeros((1, len(rows)), dtype=[(f, "O") for f in FIELDS])
    for i, row in enumerate(rows):
        annos[0, i] = row
    scipy_io.savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": annos})
    scipy_io.savemat(root / "devkit" / "cars_meta.mat",
                     {"class_names": np.array(names, dtype=object)[None]})
    return names


def test_registered():
    assert "cars" in DATASETS.names() and issubclass(DATASETS.get("cars")[0], CachedDataset)


def test_mod4_split_counts_disjoint_and_shapes(tmp_path):
    names = make_cars(tmp_path)
    data = build_dataset({"name": "cars", "root": str(tmp_path), "image_size": 10,
                          "channels": 3, "args": QUIET})
    got = {s: data.manifest["splits"][s]["class_names"] for s in ("train", "val", "test")}
    assert got == {"train": [names[i] for i in (0, 2, 4, 6)], "val": [names[1], names[5]],
                   "test": [names[3], names[7]]}
    assert not (set(got["train"]) & set(got["val"]) or set(got["train"]) & set(got["test"])
                or set(got["val"]) & set(got["test"]))
    for split, k in (("train", 4), ("val", 2), ("test", 2)):
        s = data.split(split)
        assert s.name == f"cars/{split}" and s.num_classes == k
        assert s.images.shape == (k * 2, 3, 10, 10) and s.labels.tolist() == sorted(s.labels.tolist())
    assert data.manifest["layout"] == "devkit"


def test_full_196_class_split_is_98_49_49(tmp_path):
    make_cars(tmp_path, num_classes=196, per_class=1, size=8)
    data = Cars(str(tmp_path), image_size=8, **QUIET)
    counts = {s: data.manifest["splits"][s]["classes"] for s in ("train", "val", "test")}
    assert counts == {"train": 98, "val": 49, "test": 49}
    all_names = [n for s in ("train", "val", "test") for n in data.manifest["splits"][s]["class_names"]]
    assert len(set(all_names)) == 196


def test_whole_image_torchvision_folder_and_split_file(tmp_path):
    names = make_cars(tmp_path / "stanford_cars")
    data = Cars(str(tmp_path), image_size=14, **QUIET)
    first = tmp_path / "stanford_cars" / "cars_train" / "00001.jpg"  # class 1, uncropped 14x17
    want = np.asarray(Image.open(first).convert("RGB").resize((14, 14), Image.Resampling.LANCZOS))
    assert np.array_equal(data.split("train").images[0].permute(1, 2, 0).numpy(), want)
    custom = tmp_path / "split.json"
    custom.write_text(json.dumps({"train": names[:5], "val": names[5:6], "test": names[6:]}))
    data = Cars(str(tmp_path), image_size=10, split_file=str(custom),
                cache_dir=str(tmp_path / "other"), **QUIET)
    assert [data.split(s).num_classes for s in ("train", "val", "test")] == [5, 1, 2]
    custom.write_text(json.dumps({"train": ["No Such Car"], "val": names[:1], "test": names[1:2]}))
    with pytest.raises(DataError, match="class 'No Such Car' \\(train\\) is not in .*cars_meta.mat"):
        Cars(str(tmp_path), image_size=10, split_file=str(custom), rebuild=True, **QUIET)


# ---- errors: one line naming the file ------------------------------------------------------

def test_missing_root_layout_and_file(tmp_path):
    with pytest.raises(DataError) as e:
        Cars(str(tmp_path / "nope"), **QUIET)
    assert "nope" in one_line(e.value) and "cars_train_annos.mat" in str(e.value)
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(DataError) as e:
        Cars(str(tmp_path), **QUIET)
    assert "no supported cars layout" in one_line(e.value)
    make_cars(tmp_path / "c")
    (tmp_path / "c" / "devkit" / "cars_meta.mat").unlink()
    with pytest.raises(DataError) as e:
        Cars(str(tmp_path / "c"), **QUIET)
    assert "cars_meta.mat is missing" in one_line(e.value)


def test_unreadable_mat(tmp_path):
    make_cars(tmp_path)
    path = tmp_path / "devkit" / "cars_train_annos.mat"
    path.write_bytes(path.read_bytes()[:150])
    with pytest.raises(DataError) as e:
        Cars(str(tmp_path), image_size=10, **QUIET)
    msg = one_line(e.value)
    assert str(path) in msg and "cannot read MATLAB file" in msg and "annotations" in msg
    scipy_io.savemat(path, {"other": np.zeros(3)})
    with pytest.raises(DataError, match="cars_train_annos.mat: no 'annotations'.*got \\['other'\\]"):
        Cars(str(tmp_path), image_size=10, **QUIET)


def test_bad_class_id(tmp_path):
    make_cars(tmp_path, num_classes=4, per_class=1)
    annos = np.zeros((1, 1), dtype=[(f, "O") for f in FIELDS])
    annos[0, 0] = (1, 1, 5, 5, 9, "00001.jpg")
    scipy_io.savemat(tmp_path / "devkit" / "cars_train_annos.mat", {"annotations": annos})
    with pytest.raises(DataError) as e:
        Cars(str(tmp_path), image_size=10, **QUIET)
    assert "'00001.jpg' has class 9; expected a class id in 1..4" in one_line(e.value)


def test_unreadable_and_missing_image(tmp_path):
    make_cars(tmp_path)
    bad = tmp_path / "cars_train" / "00003.jpg"  # class 3 -> train
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError) as e:
        Cars(str(tmp_path), image_size=10, **QUIET)
    msg = one_line(e.value)
    assert str(bad) in msg and "cannot decode image" in msg
    assert not list((tmp_path / ".lil_cache").rglob("manifest.json"))
    bad.unlink()
    with pytest.raises(DataError, match="00003.jpg: image file not found"):
        Cars(str(tmp_path), image_size=10, **QUIET)


def test_class_without_images(tmp_path):
    make_cars(tmp_path, num_classes=4, per_class=1)
    scipy_io.savemat(tmp_path / "devkit" / "cars_meta.mat",
                     {"class_names": np.array(["A", "B", "C", "D", "E"], dtype=object)[None]})
    with pytest.raises(DataError) as e:
        Cars(str(tmp_path), image_size=10, **QUIET)
    msg = one_line(e.value)
    assert "cars_train_annos.mat (class 5)" in msg and "class 'E' (train) has 0 images" in msg
