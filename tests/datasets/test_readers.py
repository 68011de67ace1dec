"""The real-benchmark readers on tiny fixtures built here: layouts, splits, the checksummed
cache (load without decoding, rebuild when corrupt) and one-line errors for bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import EpisodicSampler, SplitData, build_dataset
from datasets.cache import CachedDataset
from datasets.cifar_fs import DEFAULT_SPLIT, CifarFS
from datasets.cub import CUB
from datasets.mini_imagenet import MiniImageNet
from datasets.omniglot import Omniglot
from datasets.tiered_imagenet import TieredImageNet
from engine.errors import ConfigError, DataError
from engine.registry import DATASETS

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


def make_cifar(root: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-100-python"
    all_x, all_y = [], []
    for part, per_class in (("train", 2), ("test", 1)):
        y = np.repeat(np.arange(100), per_class)
        y = y[RNG.permutation(len(y))]
        x = RNG.integers(0, 256, (len(y), 3072), dtype=np.uint8)
        dump(folder / part, {"data": x, "fine_labels": y.tolist(), "coarse_labels": [0] * len(y)})
        all_x.append(x)
        all_y.append(y)
    dump(folder / "meta", {"fine_label_names": CIFAR_NAMES, "coarse_label_names": ["x"] * 20})
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


def make_cub(root: Path, num_classes: int = 8, per_class: int = 2, size: int = 12) -> list[str]:
    base = root / "CUB_200_2011"
    classes, images, labels = [], [], []
    for c in range(num_classes):
        name = f"{c + 1:03d}.Bird_{c}"
        classes.append(f"{c + 1} {name}")
        (base / "images" / name).mkdir(parents=True)
        for j in range(per_class):
            rel = f"{name}/Bird_{c}_{j}.jpg"
            Image.fromarray(rand_images(1, size)[0]).save(base / "images" / rel)
            images.append(f"{len(images) + 1} {rel}")
            labels.append(f"{len(labels) + 1} {c + 1}")
    (base / "classes.txt").write_text("\n".join(classes) + "\n")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return [c.split()[1] for c in classes]


# ---- registry and the common layer ---------------------------------------------------------

def test_readers_are_registered():
    for name in ("mini_imagenet", "tiered_imagenet", "cifar_fs", "omniglot", "cub"):
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


def test_cub_chen_split(tmp_path):
    names = make_cub(tmp_path)
    data = CUB(str(tmp_path), image_size=10, **QUIET)
    got = {s: data.manifest["splits"][s]["class_names"] for s in ("train", "val", "test")}
    assert got == {"train": names[0::2], "val": names[1::4], "test": names[3::4]}
    assert data.split("train").images.shape == (4 * 2, 3, 10, 10)
    custom = tmp_path / "split.json"
    custom.write_text(json.dumps({"train": names[:5], "val": names[5:6], "test": names[6:]}))
    data = CUB(str(tmp_path), image_size=10, split_file=str(custom),
               cache_dir=str(tmp_path / "other"), **QUIET)
    assert data.split("train").num_classes == 5


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
    from engine.config import load_config

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
