"""tools/prepare_data.py: prepares a cache, prints the manifest summary, fails in one line."""

from __future__ import annotations

import json
import pickle
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "prepare_data.py"


def run_tool(*argv: str) -> int:
    old = sys.argv
    sys.argv = [str(SCRIPT), *argv]
    try:
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(SCRIPT), run_name="__main__")
        return e.value.code
    finally:
        sys.argv = old


def make_mini(root: Path) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, k in (("train", 3), ("val", 2), ("test", 2)):
        images = rng.integers(0, 256, (2 * k, 10, 10, 3), dtype=np.uint8)
        class_dict = {f"c{split}{c}": [2 * c, 2 * c + 1] for c in range(k)}
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f)


def test_prepare_prints_summary_and_reuses_cache(tmp_path, capsys):
    make_mini(tmp_path)
    assert run_tool("mini_imagenet", str(tmp_path), "--image-size", "12") == 0
    out = capsys.readouterr().out
    assert "pickle layout" in out and "train:     3 classes        6 images" in out
    assert "data.name=mini_imagenet" in out
    manifest = json.loads((tmp_path / ".lil_cache" / "mini_imagenet-12px" / "manifest.json").read_text())
    assert manifest["splits"]["val"]["count"] == 4
    assert run_tool("mini_imagenet", str(tmp_path), "--image-size", "12", "--no-progress") == 0
    assert "preparing" not in capsys.readouterr().out  # second run: verified cache, no decoding


def test_prepare_errors_are_one_line(tmp_path, capsys):
    assert run_tool("mini_imagenet", str(tmp_path / "missing")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing" in err
    assert run_tool("glyphs", str(tmp_path)) == 2
    assert "not a prepared benchmark" in capsys.readouterr().err
    assert run_tool("mini_imagnet", str(tmp_path)) == 2
    assert "did you mean 'mini_imagenet'" in capsys.readouterr().err
