"""The Stanford Cars reader on a tiny devkit-shaped fixture written here with scipy.io.savemat
(the real class names, from the shipped split file): the shipped 98/49/49 class split, whole
images, split_file, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lil_meta.datasets import build_dataset
from lil_meta.datasets.cache import CachedDataset
from lil_meta.datasets.cars import DEFAULT_SPLIT, Cars
from lil_meta.engine.errors import DataError
from lil_meta.engine.registry import DATASETS

scipy_io = pytest.importorskip("scipy.io")

QUIET = {"progress": False}
RNG = np.random.default_rng(1)
FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and "Traceback" not in msg
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    return msg


SHIPPED = json.loads(DEFAULT_SPLIT.read_text())
NAMES_BY_ID = SHIPPED["_class_names_by_id"]  # cars_meta.mat class_names: entry k is class id k + 1


def make_cars(root: Path, num_classes: int = 196, per_class: int = 1, size: int = 14,
              names: list[str] | None = None, empty: tuple[int, ...] = ()) -> list[str]:
    """ROOT/cars_train/*.jpg + devkit/{cars_train_annos,cars_meta}.mat with the first
    ``num_classes`` real class names (all 196 by default, so the shipped split applies) or
    ``names``; the class ids in ``empty`` get no image."""
    (root / "cars_train").mkdir(parents=True)
    (root / "devkit").mkdir()
    names = list(NAMES_BY_ID[:num_classes] if names is None else names)
    rows = []
    n = 0
    for _ in range(per_class):  # images of different classes interleaved, as in the release
        for c in range(len(names)):
            if c + 1 in empty:
                continue
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


def test_shipped_split_by_name_counts_and_shapes(tmp_path):
    names = make_cars(tmp_path)
    data = build_dataset({"name": "cars", "root": str(tmp_path), "image_size": 10,
                          "channels": 3, "args": QUIET})
    got = {s: data.manifest["splits"][s]["class_names"] for s in ("train", "val", "test")}
    assert got == {s: SHIPPED[s] for s in ("train", "val", "test")}
    # the project's rule by class id: i = id - 1, i % 2 == 0 train, i % 4 == 1 val, i % 4 == 3 test
    assert got == {"train": names[0::2], "val": names[1::4], "test": names[3::4]}
    for split, k in (("train", 98), ("val", 49), ("test", 49)):
        s = data.split(split)
        assert s.name == f"cars/{split}" and s.num_classes == k
        assert s.images.shape == (k, 3, 10, 10) and s.labels.tolist() == list(range(k))
    assert data.manifest["layout"] == "devkit"


def test_whole_image_torchvision_folder_and_split_file(tmp_path):
    make_cars(tmp_path / "stanford_cars")
    data = Cars(str(tmp_path), image_size=14, **QUIET)
    first = tmp_path / "stanford_cars" / "cars_train" / "00001.jpg"  # class 1, uncropped 14x17
    want = np.asarray(Image.open(first).convert("RGB").resize((14, 14), Image.Resampling.LANCZOS))
    assert np.array_equal(data.split("train").images[0].permute(1, 2, 0).numpy(), want)
    names = NAMES_BY_ID[:8]
    custom = tmp_path / "split.json"
    custom.write_text(json.dumps({"train": names[:5], "val": names[5:6], "test": names[6:]}))
    data = Cars(str(tmp_path), image_size=10, split_file=str(custom),
                cache_dir=str(tmp_path / "other"), **QUIET)
    assert [data.split(s).num_classes for s in ("train", "val", "test")] == [5, 1, 2]
    custom.write_text(json.dumps({"train": ["No Such Car"], "val": names[:1], "test": names[1:2]}))
    with pytest.raises(DataError, match="class 'No Such Car' \\(train\\) is not in .*cars_meta.mat"):
        Cars(str(tmp_path), image_size=10, split_file=str(custom), rebuild=True, **QUIET)


def test_names_match_up_to_case_and_spaces(tmp_path):
    names = list(NAMES_BY_ID)
    names[0] = " am general  HUMMER SUV 2000"  # a respelled cars_meta.mat entry (class 1, train)
    make_cars(tmp_path, names=names)
    data = Cars(str(tmp_path), image_size=8, **QUIET)
    assert data.manifest["splits"]["train"]["class_names"][0] == names[0]
    assert data.split("train").num_classes == 98


def test_default_split_needs_its_classes(tmp_path):
    make_cars(tmp_path, num_classes=8)  # ids 1..8: id 9 (train) is missing
    with pytest.raises(DataError) as e:
        Cars(str(tmp_path), image_size=10, **QUIET)
    msg = one_line(e.value)
    assert msg.startswith(f"{DEFAULT_SPLIT}: class '{NAMES_BY_ID[8]}' (train) is not in ")
    assert "cars_meta.mat (8 classes)" in msg


# ---- errors: one line naming the file ------------------------------------------------------

def test_missing_root_layout_and_file(tmp_path):
    with pytest.raises(DataError) as e:
        Cars(str(tmp_path / "nope"), **QUIET)
    assert "nope" in one_line(e.value) and "cars_train_annos.mat" in str(e.value)
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(DataError) as e:
        Cars(str(tmp_path), **QUIET)
    assert "no supported cars layout" in one_line(e.value)
    make_cars(tmp_path / "c", num_classes=8)
    (tmp_path / "c" / "devkit" / "cars_meta.mat").unlink()
    with pytest.raises(DataError) as e:
        Cars(str(tmp_path / "c"), **QUIET)
    assert "cars_meta.mat is missing" in one_line(e.value)


def test_unreadable_mat(tmp_path):
    make_cars(tmp_path, num_classes=8)
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
    make_cars(tmp_path, empty=(1,))
    with pytest.raises(DataError) as e:
        Cars(str(tmp_path), image_size=10, **QUIET)
    msg = one_line(e.value)
    assert "cars_train_annos.mat (class 1)" in msg
    assert f"class '{NAMES_BY_ID[0]}' (train) has 0 images" in msg
