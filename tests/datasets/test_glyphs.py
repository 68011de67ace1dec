"""The procedural ``glyphs`` dataset: determinism, caching, shapes, registry and calibration."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from lil_meta.datasets import SplitData, TaskList, build_dataset, nearest_class_mean_accuracy
from lil_meta.datasets.glyphs import SPLITS, Glyphs
from lil_meta.engine.errors import ConfigError, DataError
from lil_meta.engine.registry import DATASETS

SMALL = {"num_classes": (60, 20, 20), "per_class": 20}


@pytest.fixture(scope="session")
def default_glyphs(tmp_path_factory) -> Glyphs:
    """The default-size dataset (1600 classes x 20 at 28 px), generated once per session."""
    return Glyphs(root=str(tmp_path_factory.mktemp("glyphs_default")))


def test_splits_have_expected_shapes(tmp_path):
    data = Glyphs(root=str(tmp_path), **SMALL)
    assert set(data.splits) == set(SPLITS)
    for name, classes in zip(SPLITS, SMALL["num_classes"], strict=True):
        split = data.split(name)
        assert isinstance(split, SplitData) and split.name == f"glyphs/{name}"
        assert split.images.shape == (classes * 20, 1, 28, 28)
        assert split.images.dtype == torch.uint8
        assert split.class_sizes().tolist() == [20] * classes
    assert float(data.split("train").images.float().std()) > 10
    with pytest.raises(DataError, match="unknown split 'dev'"):
        data.split("dev")


def test_same_seed_same_bytes_in_different_roots(tmp_path):
    a = Glyphs(root=str(tmp_path / "a"), seed=3, **SMALL)
    b = Glyphs(root=str(tmp_path / "b"), seed=3, **SMALL)
    c = Glyphs(root=str(tmp_path / "c"), seed=4, **SMALL)
    for name in SPLITS:
        assert torch.equal(a.split(name).images, b.split(name).images)
        assert torch.equal(a.split(name).labels, b.split(name).labels)
    assert not torch.equal(a.split("train").images, c.split("train").images)


def test_cache_is_written_once_and_reused(tmp_path, capsys):
    first = Glyphs(root=str(tmp_path), **SMALL)
    assert first.generated and "generating glyphs cache" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name, first.path.name + ".sha256"]
    stamp = first.path.stat().st_mtime_ns
    second = Glyphs(root=str(tmp_path), **SMALL)
    assert not second.generated and capsys.readouterr().out == ""
    assert second.path.stat().st_mtime_ns == stamp
    assert torch.equal(first.split("val").images, second.split("val").images)
    assert Glyphs(root=str(tmp_path), noise=0.2, **SMALL).path != first.path


def test_corrupt_cache_is_regenerated(tmp_path):
    good = Glyphs(root=str(tmp_path), **SMALL)
    good.path.write_bytes(b"not an array")
    again = Glyphs(root=str(tmp_path), **SMALL)
    assert again.generated
    assert torch.equal(good.split("test").images, again.split("test").images)


def test_three_channels_and_larger_images(tmp_path):
    small = {"num_classes": (4, 3, 3), "per_class": 5}
    rgb = Glyphs(root=str(tmp_path), channels=3, **small)
    gray = Glyphs(root=str(tmp_path), channels=1, **small)
    assert not gray.generated
    images = rgb.split("train").images
    assert images.shape == (20, 3, 28, 28)
    assert torch.equal(images[:, 0], images[:, 2]) and torch.equal(images[:, :1], gray.split("train").images)
    big = Glyphs(root=str(tmp_path), image_size=84, **small)
    assert big.split("test").images.shape == (15, 1, 84, 84)
    batch = next(TaskList(big.split("test"), 3, 2, 3, num_tasks=2).batches(2))
    assert batch.support_x.shape == (2, 6, 1, 84, 84)


def test_each_class_is_its_own_template_across_splits(tmp_path):
    """With the nuisances off, two halves of a class match each other better than any other class."""
    data = Glyphs(root=str(tmp_path), distortion=0.0, noise=0.0, **SMALL)
    images = torch.cat([data.split(n).images.float().view(-1, 20, 28 * 28) for n in SPLITS])
    first, second = images[:, :10].mean(1), images[:, 10:].mean(1)
    same = (first - second).norm(dim=1)
    cross = torch.cdist(first, second).fill_diagonal_(float("inf"))
    assert same.max() < cross.min()


def test_invalid_arguments_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="num_classes: expected 3 positive integers"):
        Glyphs(root=str(tmp_path), num_classes=(10, 10))
    with pytest.raises(ConfigError, match="channels"):
        Glyphs(root=str(tmp_path), channels=2)


def test_build_dataset_from_config(tmp_path):
    cfg = OmegaConf.create({"name": "glyphs", "root": str(tmp_path), "image_size": 28, "channels": 3,
                            "seed": 1, "args": {"num_classes": [6, 3, 3], "per_class": 5}})
    data = build_dataset(cfg)
    assert "glyphs" in DATASETS.names()
    assert data.split("val").images.shape == (15, 3, 28, 28)
    plain = build_dataset({"name": "glyphs", "root": str(tmp_path), "channels": 3, "seed": 1,
                           "args": {"train_classes": 6, "val_classes": 3, "test_classes": 3, "per_class": 5}})
    assert torch.equal(plain.split("val").images, data.split("val").images)
    with pytest.raises(ConfigError, match="data.bogus: unknown argument"):
        build_dataset({"name": "glyphs", "root": str(tmp_path), "args": {"bogus": 1}})
    with pytest.raises(ConfigError, match="unknown dataset 'glyph'"):
        build_dataset({"name": "glyph"})


def test_empty_root_uses_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = build_dataset({"name": "glyphs", "root": None, "args": {"num_classes": [3, 3, 3], "per_class": 2}})
    assert data.path.parent.resolve() == (tmp_path / ".cache" / "glyphs").resolve()


def test_default_size_nearest_class_mean_is_calibrated(default_glyphs):
    """Raw-pixel NCM must sit in [35, 60]% on 5-way 5-shot: hard for pixels, learnable for a CNN."""
    sizes = {n: len(default_glyphs.split(n)) for n in SPLITS}
    assert sizes == {"train": 20000, "val": 4000, "test": 8000}
    tasks = TaskList(default_glyphs.split("test"), 5, 5, 15, num_tasks=400, seed=0)
    acc = torch.cat([nearest_class_mean_accuracy(b) for b in tasks.batches(100)]).mean().item()
    assert 0.35 <= acc <= 0.60, f"NCM accuracy {acc:.3f}"
