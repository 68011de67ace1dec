"""The real-benchmark readers' errors: one line naming the file and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from lil_meta.datasets import build_dataset
from lil_meta.datasets.cifar_fs import CifarFS
from lil_meta.datasets.cub import CUB
from lil_meta.datasets.mini_imagenet import MiniImageNet
from lil_meta.datasets.omniglot import Omniglot
from lil_meta.datasets.tiered_imagenet import TieredImageNet
from lil_meta.engine.errors import ConfigError, DataError
from reader_fixtures import (
    QUIET,
    dump,
    make_cifar,
    make_cub,
    make_mini_csv,
    make_mini_pickle,
    make_omniglot,
    make_tiered,
    one_line,
)

# ---- errors: one line naming the file and what was expected --------------------------------

def test_missing_root_and_unset_root(tmp_path):
    with pytest.raises(DataError) as e:
        MiniImageNet(str(tmp_path / "nope"), **QUIET)
    msg = one_line(e.value)
    assert "nope" in msg and "not found" in msg and "mini-imagenet-cache" in msg
    with pytest.raises(ConfigError, match="data.root: required for dataset 'cub'"):
        build_dataset({"name": "cub", "image_size": 84, "channels": 3})


def test_wrong_layout_lists_supported_ones(tmp_path):
    (tmp_path / "stuff.txt").write_text("x")
    for cls in (MiniImageNet, CifarFS, Omniglot, TieredImageNet, CUB):
        with pytest.raises(DataError) as e:
            cls(str(tmp_path), **QUIET)
        msg = one_line(e.value)
        assert str(tmp_path) in msg and "supported" in msg
    with pytest.raises(DataError, match="csv: images/"):
        MiniImageNet(str(tmp_path), **QUIET)


def test_missing_file(tmp_path):
    make_mini_csv(tmp_path)
    (tmp_path / "val.csv").unlink()
    with pytest.raises(DataError) as e:
        MiniImageNet(str(tmp_path), image_size=12, **QUIET)
    assert "val.csv: not found" in one_line(e.value) and "filename,label" in str(e.value)
    make_mini_pickle(tmp_path / "p")
    (tmp_path / "p" / "mini-imagenet-cache-test.pkl").unlink()
    with pytest.raises(DataError, match="mini-imagenet-cache-test.pkl: not found; expected a pickled"):
        MiniImageNet(str(tmp_path / "p"), image_size=12, **QUIET)


def test_truncated_pickles(tmp_path):
    make_mini_pickle(tmp_path / "mini")
    path = tmp_path / "mini" / "mini-imagenet-cache-val.pkl"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError) as e:
        MiniImageNet(str(tmp_path / "mini"), image_size=12, **QUIET)
    msg = one_line(e.value)
    assert str(path) in msg and "truncated" in msg and "image_data" in msg
    make_tiered(tmp_path / "tiered", "png-pickle")
    path = tmp_path / "tiered" / "test_labels.pkl"
    path.write_bytes(b"not a pickle")
    with pytest.raises(DataError) as e:
        TieredImageNet(str(tmp_path / "tiered"), image_size=12, **QUIET)
    assert str(path) in one_line(e.value) and "label_specific" in str(e.value)
    make_cifar(tmp_path / "cifar")
    path = tmp_path / "cifar" / "cifar-100-python" / "test"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="cifar-100-python/test: cannot unpickle"):
        CifarFS(str(tmp_path / "cifar"), image_size=32, **QUIET)


def test_wrong_pickle_contents(tmp_path):
    make_mini_pickle(tmp_path)
    dump(tmp_path / "mini-imagenet-cache-train.pkl", {"images": 1})
    with pytest.raises(DataError, match="expected a pickled dict with 'image_data'.*got \\['images'\\]"):
        MiniImageNet(str(tmp_path), image_size=12, **QUIET)


def test_unreadable_image(tmp_path):
    make_mini_csv(tmp_path)
    bad = tmp_path / "images" / "train1_2.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError) as e:
        MiniImageNet(str(tmp_path), image_size=12, **QUIET)
    msg = one_line(e.value)
    assert str(bad) in msg and "cannot decode image" in msg
    make_tiered(tmp_path / "t", "png-pickle")
    dump(tmp_path / "t" / "val_images_png.pkl", [b"junk", b"junk", b"junk", b"junk"])
    with pytest.raises(DataError, match="val_images_png.pkl \\(image 0\\): cannot decode image"):
        TieredImageNet(str(tmp_path / "t"), image_size=12, **QUIET)
    cache = tmp_path / "t" / ".lil_cache"
    assert not list(cache.rglob("manifest.json")) and not list(cache.rglob("*.tmp"))


def test_class_with_too_few_images(tmp_path):
    make_omniglot(tmp_path)
    with pytest.raises(DataError) as e:
        Omniglot(str(tmp_path), num_train=3, num_val=1, min_per_class=5, **QUIET)
    msg = one_line(e.value)
    assert "Alpha/character01" in msg and "has 3 images; expected >= 5" in msg
    empty = tmp_path / "images_evaluation" / "Beta" / "character02"
    for f in empty.iterdir():
        f.unlink()
    with pytest.raises(DataError, match="character02.*has 0 images; expected >= 1"):
        Omniglot(str(tmp_path), num_train=3, num_val=1, **QUIET)
    with pytest.raises(DataError, match="needs >= 7"):
        Omniglot(str(tmp_path), num_train=5, num_val=1, **QUIET)


def test_lil_mini_config_requires_root():
    from lil_meta.engine.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "maml_lil_mini_5shot.yaml")
    assert cfg.data.name == "mini_imagenet" and cfg.data.image_size == 84 and cfg.data.channels == 3
    with pytest.raises(ConfigError, match="data.root: required for dataset 'mini_imagenet'"):
        build_dataset(cfg.data)


def test_cross_domain_from_config(tmp_path):
    from omegaconf import OmegaConf

    make_mini_pickle(tmp_path / "mini")
    make_cub(tmp_path / "cub")
    cfg = OmegaConf.create({"name": "cross_domain", "root": None, "image_size": 10, "channels": 3,
                            "args": {"train": {"name": "mini_imagenet", "root": str(tmp_path / "mini"),
                                               **QUIET},
                                     "test": {"name": "cub", "root": str(tmp_path / "cub"), **QUIET}}})
    data = build_dataset(cfg)
    assert data.split("train").name == "mini_imagenet/train" and data.split("train").num_classes == 4
    assert data.split("val").name == "mini_imagenet/val"
    assert data.split("test").name == "cub/test" and data.split("test").images.shape[1:] == (3, 10, 10)
    bad = OmegaConf.to_container(cfg)
    bad["args"]["test"]["image_size"] = 84
    with pytest.raises(ConfigError, match="data.args.test.image_size: set it once as data.image_size"):
        build_dataset(bad)
    with pytest.raises(ConfigError, match="data.args.test: expected a dataset spec"):
        build_dataset({"name": "cross_domain", "args": {"train": {"name": "glyphs"}}})
