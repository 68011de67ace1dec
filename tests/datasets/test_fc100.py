"""The FC100 reader: superclass split over the CIFAR-100 pickles (tiny fixture of
reader_fixtures), and its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lil_meta.datasets.fc100 import DEFAULT_SPLIT, FC100
from lil_meta.engine.errors import DataError
from reader_fixtures import CIFAR_NAMES, COARSE_NAMES, QUIET, dump, make_cifar, one_line


def test_fc100_splits_are_whole_superclasses(tmp_path):
    x, y = make_cifar(tmp_path)
    data = FC100(str(tmp_path), image_size=32, **QUIET)
    spec = json.loads(DEFAULT_SPLIT.read_text())
    seen = set()
    for split in ("train", "val", "test"):
        s = data.split(split)
        names = data.manifest["splits"][split]["class_names"]
        supers = [COARSE_NAMES.index(n) for n in spec[split]]
        expected = [CIFAR_NAMES[f] for k in supers for f in sorted(range(100), key=CIFAR_NAMES.__getitem__)
                    if f // 5 == k]
        assert names == expected and len(names) == 5 * len(spec[split])
        assert s.images.shape == (3 * len(names), 3, 32, 32)
        for c, name in enumerate(names):  # the fixture's images of that fine class, in order
            rows = np.flatnonzero(y == CIFAR_NAMES.index(name))
            got = s.images[s.labels == c].numpy()
            assert np.array_equal(got, x[rows].reshape(-1, 3, 32, 32))
        seen |= set(names)
    assert len(seen) == 100


def test_fc100_without_coarse_labels_is_one_line(tmp_path):
    make_cifar(tmp_path)
    train = tmp_path / "cifar-100-python" / "train"
    d = __import__("pickle").loads(train.read_bytes())
    del d["coarse_labels"]
    dump(train, d)
    with pytest.raises(DataError) as e:
        FC100(str(tmp_path), image_size=32, **QUIET)
    assert "coarse_labels" in one_line(e.value)


def test_fc100_split_naming_an_unknown_superclass(tmp_path):
    make_cifar(tmp_path)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["fish", "dragons"], "val": ["trees"], "test": ["people"]}))
    with pytest.raises(DataError) as e:
        FC100(str(tmp_path), image_size=32, split_file=str(split), **QUIET)
    msg = one_line(e.value)
    assert "class 'dragons' (train) is not in the coarse_label_names" in msg and str(split) in msg
