"""engine.fileio: atomic writes leave the old file or the new one, never a partial one."""

import numpy as np
import pytest

from lil_meta.engine.fileio import atomic_path, atomic_write


def test_atomic_write_accepts_bytes_str_and_a_writer(tmp_path):
    p = tmp_path / "f.bin"
    assert atomic_write(p, b"abc") == p and p.read_bytes() == b"abc"
    atomic_write(p, "héllo")
    assert p.read_text(encoding="utf-8") == "héllo"
    atomic_write(p, lambda f: f.write(b"xyz"))
    assert p.read_bytes() == b"xyz"
    assert [q.name for q in tmp_path.iterdir()] == ["f.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, boom)
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_path_for_writers_that_want_a_name(tmp_path):
    p = tmp_path / "a.npy"
    with atomic_path(p) as tmp:
        assert tmp.parent == tmp_path and not p.exists()
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(2, 3))
        out[:] = 7
        out.flush()
        del out
    assert (np.load(p) == 7).all()
    with pytest.raises(ValueError), atomic_path(p) as tmp:
        tmp.write_bytes(b"junk")
        raise ValueError
    assert (np.load(p) == 7).all()
    assert [q.name for q in tmp_path.iterdir()] == ["a.npy"]
