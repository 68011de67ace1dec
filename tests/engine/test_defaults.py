"""default_setup: output-folder refusals, writability, config.yaml; optimizer choice."""

from __future__ import annotations

import logging
import types

import pytest
import torch
from omegaconf import OmegaConf

from lil_meta.engine.defaults import default_setup, resolve_device
from lil_meta.engine.errors import ConfigError, UserInputError
from tests_helpers import schema_config


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def make_cfg(out, **overrides):
    return schema_config(output_dir=str(out), **overrides)


def args(resume=False, eval_only=False):
    return types.SimpleNamespace(resume=resume, eval_only=eval_only)


def test_setup_writes_config_seeds_and_logs(tmp_path):
    out = tmp_path / "run"
    cfg = make_cfg(out, seed=7)
    device = default_setup(cfg, args())
    assert device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert OmegaConf.load(out / "config.yaml").seed == 7
    assert OmegaConf.is_readonly(cfg)
    a = torch.rand(2)
    torch.manual_seed(7)
    assert torch.equal(a, torch.rand(2))
    logging.getLogger("x").info("hello")
    assert "hello" in (out / "log.txt").read_text()


def test_existing_run_is_refused_unless_resumed(tmp_path):
    default_setup(make_cfg(tmp_path), args())
    with pytest.raises(UserInputError, match="already holds a run; pass --resume or choose another"):
        default_setup(make_cfg(tmp_path), args())
    with pytest.raises(UserInputError, match="already holds a run with a different config"):
        default_setup(make_cfg(tmp_path, seed=1), args())
    default_setup(make_cfg(tmp_path, **{"solver.max_iter": 9}), args(resume=True))
    assert OmegaConf.load(tmp_path / "config.yaml").solver.max_iter == 9


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserInputError, match="exists and is not a folder"):
        default_setup(make_cfg(blocker), args())
    with pytest.raises(UserInputError, match="cannot write to"):
        default_setup(make_cfg(blocker / "sub"), args())


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device: 'gpu0' is not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
