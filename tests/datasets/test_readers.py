"""The real-benchmark readers on tiny fixtures built here: layouts, splits and the checksummed
cache (load without decoding, rebuild when corrupt)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lil_meta.datasets import EpisodicSampler, SplitData, build_dataset
from lil_meta.datasets.cache import CachedDataset
from lil_meta.datasets.cifar_fs import DEFAULT_SPLIT, CifarFS
from lil_meta.datasets.cub import CUB
from lil_meta.datasets.cub import DEFAULT_SPLIT as CUB_SPLIT
from lil_meta.datasets.mini_imagenet import MiniImageNet
from lil_meta.datasets.omniglot import Omniglot
from lil_meta.datasets.tiered_imagenet import TieredImageNet
from lil_meta.engine.errors import DataError
from lil_meta.engine.registry import DATASETS
from reader_fixtures import (
    CIFAR_NAMES,
    MINI_CLASSES,
    QUIET,
    make_cifar,
    make_cub,
    make_mini_csv,
    make_mini_pickle,
    make_omniglot,
    make_tiered,
    one_line,
)

# ---- registry and the common layer ---------------------------------------------------------

def test_readers_are_registered():
    for name in ("mini_imagenet", "tiered_imagenet", "cifar_fs", "fc100", "omniglot", "cub",
                 "fgvc_aircraft"):
        assert name in DATASETS.names()
        assert issubclass(DATASETS.get(name)[0], CachedDataset)


def test_mini_pickle_layout_matches_source(tmp_path):
    arrays = make_mini_pickle(tmp_path)
    data = MiniImageNet(str(tmp_path), image_size=12, **QUIET)
    assert data.manifest["layout"] == "pickle"
    for split, k in MINI_CLASSES.items():
        s = data.split(split)
        assert isinstance(s, SplitData) and s.name == f"mini_imagenet/{split}"
        assert s.images.shape == (k * 3, 3, 12, 12) and s.num_classes == k
        images, class_dict = arrays[split]
        for c, cls in enumerate(sorted(class_dict)):
            got = s.images[s.labels == c].permute(0, 2, 3, 1).numpy()
            assert np.array_equal(got, images[class_dict[cls]])
        assert data.manifest["splits"][split]["class_names"] == sorted(class_dict)


def test_cache_manifest_and_fast_reload(tmp_path, monkeypatch):
    make_mini_pickle(tmp_path)
    first = MiniImageNet(str(tmp_path), image_size=16, **QUIET)
    cache = tmp_path / ".lil_cache" / "mini_imagenet-16px"
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["image_size"] == 16 and manifest["layout"] == "pickle"
    assert manifest["splits"]["train"]["count"] == 12 and manifest["splits"]["val"]["classes"] == 2
    for info in manifest["splits"].values():
        assert set(info["sha256"]) == {info["images"], info["labels"]}
        assert np.load(cache / info["images"], mmap_mode="r").dtype == np.uint8
    assert not list(cache.glob("*.tmp"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(MiniImageNet, "read_split", no_decoding)
    again = MiniImageNet(str(tmp_path), image_size=16, **QUIET)
    assert torch.equal(again.split("train").images, first.split("train").images)
    assert torch.equal(again.split("test").labels, first.split("test").labels)


def test_corrupt_cache_is_rebuilt_with_one_line(tmp_path, capsys):
    make_mini_pickle(tmp_path)
    first = MiniImageNet(str(tmp_path), image_size=12, **QUIET)
    reference = first.split("val").images.clone()
    target = tmp_path / ".lil_cache" / "mini_imagenet-12px" / "val_images.npy"
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0xFF
    target.write_bytes(bytes(raw))
    capsys.readouterr()
    again = MiniImageNet(str(tmp_path), image_size=12, **QUIET)
    out = capsys.readouterr().out
    assert sum("checksum mismatch" in line for line in out.splitlines()) == 1
    assert "val_images.npy is corrupt (checksum mismatch)" in out
    assert torch.equal(again.split("val").images, reference)


def test_cache_dir_channels_and_build_dataset(tmp_path):
    make_mini_pickle(tmp_path / "src")
    data = build_dataset({"name": "mini_imagenet", "root": str(tmp_path / "src"), "image_size": 8,
                          "channels": 1, "args": {"cache_dir": str(tmp_path / "c"), **QUIET}})
    assert (tmp_path / "c" / "mini_imagenet-8px" / "manifest.json").is_file()
    assert not (tmp_path / "src" / ".lil_cache").exists()
    split = data.split("train")
    assert split.images.shape == (12, 1, 8, 8)
    batch = EpisodicSampler(split, way=2, shot=1, query=2, meta_batch=2).next_batch()
    assert batch.support_x.shape[-3:] == (1, 8, 8)


def test_mini_csv_layout(tmp_path):
    arrays = make_mini_csv(tmp_path)
    data = MiniImageNet(str(tmp_path), image_size=12, **QUIET)
    assert data.manifest["layout"] == "csv"
    s = data.split("test")
    assert s.num_classes == 3 and len(s) == 9
    first = arrays["test"]["test0_0.png"]
    assert np.array_equal(s.images[0].permute(1, 2, 0).numpy(), first)


def test_cifar_fs_split_and_merge(tmp_path):
    x, y = make_cifar(tmp_path)
    spec = json.loads(DEFAULT_SPLIT.read_text())
    assert [len(spec[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert len(set(spec["train"]) | set(spec["val"]) | set(spec["test"])) == 100
    data = CifarFS(str(tmp_path), image_size=32, **QUIET)
    for split, k in (("train", 64), ("val", 16), ("test", 20)):
        s = data.split(split)
        assert s.num_classes == k and len(s) == 3 * k  # 2 train + 1 test image per class
    val = data.split("val")
    label = CIFAR_NAMES.index(spec["val"][0])
    want = x[y == label].reshape(-1, 3, 32, 32)
    assert np.array_equal(val.images[val.labels == 0].numpy(), want)
    assert CifarFS(str(tmp_path), **QUIET).split("test").images.shape[-1] == 84
    custom = tmp_path / "split.json"
    custom.write_text(json.dumps({**spec, "val": ["no_such_class", *spec["val"][1:]]}))
    with pytest.raises(DataError) as e:
        CifarFS(str(tmp_path), image_size=32, split_file=str(custom), **QUIET)
    assert "class 'no_such_class' (val) is not in the fine_label_names of" in one_line(e.value)


def test_omniglot_split_inversion_and_rotations(tmp_path):
    make_omniglot(tmp_path)
    data = Omniglot(str(tmp_path), num_train=3, num_val=1, **QUIET)
    names = data.manifest["splits"]
    assert names["train"]["class_names"] == [f"Alpha/character0{i}" for i in (1, 2, 3)]
    assert names["val"]["class_names"] == ["Beta/character01"]
    assert names["test"]["class_names"] == ["Beta/character02", "Gamma/character01"]
    train = data.split("train")
    assert train.images.shape == (3 * 3 * 4, 1, 28, 28) and train.num_classes == 12
    img = train.images[0, 0].float()
    assert img.mean() < 60 and img.max() > 200  # inverted: bright strokes on black
    r90 = train.images[train.labels == 3][0]  # character 0, rotated 90°
    assert torch.equal(r90, torch.rot90(train.images[0], 1, dims=(1, 2)))
    plain = Omniglot(str(tmp_path), num_train=3, num_val=1, rotations=False, **QUIET)
    assert plain.split("test").num_classes == 2 and plain.split("test").images.shape[-1] == 28
    assert Omniglot(str(tmp_path), num_train=3, num_val=1, channels=3,
                    **QUIET).split("val").images.shape[1] == 3


@pytest.mark.parametrize("layout", ["png-pickle", "npz"])
def test_tiered_layouts(tmp_path, layout):
    arrays = make_tiered(tmp_path, layout)
    data = TieredImageNet(str(tmp_path), image_size=12, **QUIET)
    assert data.manifest["layout"] == layout
    for split, (images, specific) in arrays.items():
        s = data.split(split)
        ids = sorted(set(specific.tolist()))
        assert s.num_classes == len(ids)
        assert s.labels.tolist() == [ids.index(v) for v in specific]
        assert np.array_equal(s.images.permute(0, 2, 3, 1).numpy(), images)
    assert data.manifest["splits"]["train"]["class_names"][0] == "s30"


def test_cub_shipped_split_is_chen_et_al(tmp_path):
    names = make_cub(tmp_path)  # all 200 real class folders, one image each
    data = CUB(str(tmp_path), image_size=10, **QUIET)
    got = {s: data.manifest["splits"][s]["class_names"] for s in ("train", "val", "test")}
    shipped = json.loads(CUB_SPLIT.read_text())
    assert got == {s: shipped[s] for s in ("train", "val", "test")}
    assert got == {"train": names[0::2], "val": names[1::4], "test": names[3::4]}
    assert data.split("train").images.shape == (100, 3, 10, 10)
    assert data.split("test").num_classes == 50


def test_cub_split_file_override_and_name_matching(tmp_path):
    names = make_cub(tmp_path, num_classes=8)
    custom = tmp_path / "split.json"
    custom.write_text(json.dumps({"train": names[:5], "val": [" " + names[5].upper() + " "],
                                  "test": names[6:]}))
    data = CUB(str(tmp_path), image_size=10, split_file=str(custom), **QUIET)
    assert [data.split(s).num_classes for s in ("train", "val", "test")] == [5, 1, 2]
    assert data.manifest["splits"]["val"]["class_names"] == [names[5]]  # spelled as in the data
    custom.write_text(json.dumps({"train": ["999.No_Such_Bird"], "val": names[:1], "test": names[1:2]}))
    with pytest.raises(DataError) as e:
        CUB(str(tmp_path), image_size=10, split_file=str(custom), rebuild=True, **QUIET)
    assert "class '999.No_Such_Bird' (train) is not in" in one_line(e.value)
    assert "classes.txt (8 classes)" in str(e.value)


def test_cub_default_split_needs_its_classes(tmp_path):
    make_cub(tmp_path, num_classes=8)  # 001..008 only: 009.Brewer_Blackbird (train) is missing
    with pytest.raises(DataError) as e:
        CUB(str(tmp_path), image_size=10, **QUIET)
    msg = one_line(e.value)
    assert msg.startswith(f"{CUB_SPLIT}: class '009.Brewer_Blackbird' (train) is not in ")
    assert "CUB_200_2011/classes.txt (8 classes)" in msg
    assert not list((tmp_path / ".lil_cache").rglob("manifest.json"))
