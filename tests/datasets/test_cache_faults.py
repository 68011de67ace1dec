"""Dataset caches and sources that are wrong on disk: one DataError line, or a regenerated cache
with a warning; never a traceback, never a silently wrong image."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch

from lil_meta.datasets import glyphs
from lil_meta.datasets.cub import CUB
from lil_meta.datasets.glyphs import Glyphs
from lil_meta.engine.errors import DataError
from reader_fixtures import QUIET, make_cub

SMALL = {"num_classes": (6, 3, 3), "per_class": 4}


def test_pixels_overwritten_in_place_fail_the_checksum_and_are_regenerated(tmp_path, capsys):
    good = Glyphs(root=str(tmp_path), **SMALL)
    data = bytearray(good.path.read_bytes())
    data[-100:] = bytes(100)  # same size, same header: np.load alone would take it
    good.path.write_bytes(bytes(data))
    glyphs._VERIFIED.clear()  # as in a new process
    capsys.readouterr()
    again = Glyphs(root=str(tmp_path), **SMALL)
    assert again.generated and "fails its checksum (the file was changed); regenerating it" in capsys.readouterr().err
    assert torch.equal(good.split("test").images, again.split("test").images)
    assert not Glyphs(root=str(tmp_path), **SMALL).generated


@pytest.mark.parametrize("damage", ["zero bytes", "no checksum"])
def test_an_unusable_glyphs_cache_is_regenerated_with_a_warning(tmp_path, capsys, damage):
    good = Glyphs(root=str(tmp_path), **SMALL)
    if damage == "zero bytes":
        good.path.write_bytes(b"")
    else:
        (tmp_path / (good.path.name + ".sha256")).unlink()
    glyphs._VERIFIED.clear()
    capsys.readouterr()
    assert Glyphs(root=str(tmp_path), **SMALL).generated
    assert "warning: glyphs cache" in capsys.readouterr().err


def test_a_glyphs_cache_path_that_is_a_folder_or_a_root_that_is_a_file(tmp_path):
    path = Glyphs(root=str(tmp_path / "a"), **SMALL).path
    path.unlink()
    path.mkdir()
    with pytest.raises(DataError, match=r"the glyphs cache path is a folder"):
        Glyphs(root=str(tmp_path / "a"), **SMALL)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"file: data.root is a file; glyphs keeps its cache in a folder"):
        Glyphs(root=str(tmp_path / "file"), **SMALL)


@pytest.mark.skipif(os.geteuid() == 0, reason="this user writes files whatever their mode (root)")
def test_a_read_only_glyphs_root(tmp_path):
    root = tmp_path / "ro"
    root.mkdir(mode=0o555)
    with pytest.raises(DataError, match=r"ro: cannot write the glyphs cache there \(Permission denied\)"):
        Glyphs(root=str(root), **SMALL)


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(
        b"IEND", b"")


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub")
    make_cub(root)
    return root


def test_cub_faults_are_one_line(cub_root, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"file/cub-10px: cannot write the cub cache there .*writable folder"):
        CUB(str(cub_root), image_size=10, cache_dir=str(tmp_path / "file"), **QUIET)
    data = CUB(str(cub_root), image_size=10, cache_dir=str(tmp_path / "c"), **QUIET)
    (data.cache_path / "manifest.json").write_text("[]")
    again = CUB(str(cub_root), image_size=10, cache_dir=str(tmp_path / "c"), **QUIET)  # rebuilt
    assert isinstance(json.loads((again.cache_path / "manifest.json").read_text()), dict)
    first = sorted((cub_root / "CUB_200_2011" / "images").iterdir())[0]
    image = sorted(first.iterdir())[0]
    saved = image.read_bytes()
    image.write_bytes(_png_header(30000, 30000))
    try:
        with pytest.raises(DataError, match=rf"{image.name}: image too large to decode \(Image size"):
            CUB(str(cub_root), image_size=10, cache_dir=str(tmp_path / "d"), **QUIET)
    finally:
        image.write_bytes(saved)
    assert np.asarray(again.split("train").images).dtype == np.uint8
