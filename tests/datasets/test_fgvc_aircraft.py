"""The FGVC-Aircraft reader on a tiny fixture in the archive's layout (reader_fixtures):
variant split, merged image lists, one-line errors."""

from __future__ import annotations

import json

import pytest

from lil_meta.datasets.fgvc_aircraft import DEFAULT_SPLIT, FGVCAircraft
from lil_meta.engine.errors import DataError
from reader_fixtures import QUIET, make_aircraft, one_line


def test_aircraft_split_and_layout(tmp_path):
    make_aircraft(tmp_path, per_class=2)
    data = FGVCAircraft(str(tmp_path), image_size=12, **QUIET)
    spec = json.loads(DEFAULT_SPLIT.read_text())
    assert data.manifest["layout"] == "fgvc-aircraft-2013b"
    for split, k in (("train", 70), ("val", 15), ("test", 15)):
        s = data.split(split)
        assert data.manifest["splits"][split]["class_names"] == spec[split]
        assert s.num_classes == k and s.images.shape == (2 * k, 3, 12, 12)
    # ROOT may also be the data folder itself
    again = FGVCAircraft(str(tmp_path / "fgvc-aircraft-2013b" / "data"), image_size=12, **QUIET)
    assert again.manifest["splits"]["test"]["count"] == 30


def test_aircraft_unknown_variant_in_a_list_is_one_line(tmp_path):
    make_aircraft(tmp_path, per_class=1)
    path = tmp_path / "fgvc-aircraft-2013b" / "data" / "images_variant_val.txt"
    path.write_text(path.read_text() + "0000001 Concorde\n")
    with pytest.raises(DataError) as e:
        FGVCAircraft(str(tmp_path), image_size=12, **QUIET)
    msg = one_line(e.value)
    assert str(path) in msg and "Concorde" in msg


def test_aircraft_missing_list_names_it(tmp_path):
    make_aircraft(tmp_path, per_class=1)
    (tmp_path / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt").unlink()
    with pytest.raises(DataError) as e:
        FGVCAircraft(str(tmp_path), image_size=12, **QUIET)
    assert "images_variant_test.txt is missing" in one_line(e.value)
