"""engine/run_folder.py: the folder's lock is held from open to release, a failed open leaves no
trace of a folder it created, and a folder that cannot take the run is refused before opening."""

from __future__ import annotations

import argparse

import pytest
import torch

from lil_meta.engine.config import load_config
from lil_meta.engine.errors import UserInputError
from lil_meta.engine.launch import World
from lil_meta.engine.run_folder import RunFolder
from lil_meta.engine.run_lock import acquire
from tests_helpers import ROOT


def folder_for(out, resume=False, weights=None):
    cfg = load_config(ROOT / "tests" / "configs" / "tiny.yaml", [f"output_dir={out}"])
    return RunFolder(cfg, argparse.Namespace(resume=resume, eval_only=False, weights=weights), World())


def test_open_holds_the_lock_until_release(tmp_path):
    out = tmp_path / "run"
    folder = folder_for(out)
    folder.check()
    folder.open(torch.nn.Linear(1, 1))
    try:
        assert (out / "config.yaml").is_file()
        with pytest.raises(UserInputError, match="is in use by another run"):
            acquire(out)
    finally:
        folder.release()
    acquire(out).release()  # free again


def test_an_open_that_fails_before_the_run_writes_removes_the_folder_it_created(tmp_path, monkeypatch):
    """E.g. a run that finished meanwhile, found under the lock: nothing of this one is left."""
    out = tmp_path / "run"
    folder = folder_for(out)

    def refuse(algorithm):
        raise UserInputError("refused under the lock")

    monkeypatch.setattr(folder, "_read", refuse)
    with pytest.raises(UserInputError, match="refused under the lock"):
        folder.open(torch.nn.Linear(1, 1))
    assert not out.exists() and folder.lock is None


def test_a_folder_holding_a_run_is_refused_before_anything_opens(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(UserInputError, match="already holds a run; pass --resume"):
        folder_for(out).check()
    with pytest.raises(UserInputError, match=r"--weights .*absent\.pth: checkpoint not found"):
        folder_for(tmp_path / "other", weights=str(tmp_path / "absent.pth")).check()
    assert not (tmp_path / "other").exists()
