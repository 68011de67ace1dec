"""Config values refused when the config loads, one line naming the key, before anything is built."""

from __future__ import annotations

import pytest

from lil_meta.engine.config import load_config
from lil_meta.engine.errors import ConfigError
from tests_helpers import ROOT

TINY = ROOT / "tests" / "configs" / "tiny.yaml"


@pytest.mark.parametrize("override, message", [
    ("solver.meta_batch=1000000000", r"solver\.meta_batch: 1000000000 tasks do not fit in memory: .* GiB"),
    ("solver.weight_decay=-1", r"solver\.weight_decay: must be a finite number >= 0, got -1\.0"),
    ("solver.lr=inf", r"solver\.lr: must be a finite number > 0, got inf"),
    ("solver.lr=0", r"solver\.lr: must be a finite number > 0"),
    ("algorithm.inner_lr=nan", r"algorithm\.inner_lr: must be a finite number, got nan"),
    ("seed=100000000000000000000", r"seed: must be an integer in \[0, 2\*\*63 - 1\]"),
    ("seed=-1", r"seed: must be an integer in"),
    ("test.batch=0", r"test\.batch: must be >= 1"),
    ("test.tasks=1000000000", r"test\.tasks: must be between 1 and 1000000, got 1000000000"),
    ("test.val_tasks=0", r"test\.val_tasks: must be between 1 and"),
    ("device=meta", r"device: 'meta' is not a device to train on"),
    ("device=cuda:x", r"device: 'cuda:x' is not a device"),
    ("extra_modules=[.relative]", r"extra_modules: '\.relative' is not an importable module name"),
    ("extra_modules=[my/file.py]", r"extra_modules: 'my/file\.py' is not an importable module name"),
    ("solver.task_chunk=-1", r"solver\.task_chunk: expected auto or an integer >= 0 \(tasks per forward and "
                             r"backward; 0: the whole meta-batch\), got -1$"),
    ("solver.task_chunk=half", r"solver\.task_chunk: expected auto or an integer >= 0 .*, got 'half'"),
    ("solver.task_chunk=1.5", r"solver\.task_chunk: expected auto or an integer >= 0 .*, got 1\.5"),
])
def test_a_bad_value_is_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


def test_good_values_load():
    cfg = load_config(TINY, ["solver.meta_batch=64", "seed=9223372036854775807", "device=cuda:1",
                             "extra_modules=[os.path]", "algorithm.inner_lr=-0.1"])
    assert cfg.seed == 2**63 - 1 and cfg.device == "cuda:1"
    assert load_config(TINY, []).solver.task_chunk == "auto"  # the default
    assert load_config(TINY, ["solver.task_chunk=0"]).solver.task_chunk == 0


def test_the_documented_dataset_arguments_are_config_keys():
    cfg = load_config(ROOT / "configs" / "maml_lil_mini_5shot.yaml",
                      ["data.root=/data/mini", "data.args.rebuild=true", "data.args.verify=false",
                       "data.args.cache_dir=/scratch/cache"])
    assert dict(cfg.data.args) == {"rebuild": True, "verify": False, "cache_dir": "/scratch/cache"}
    with pytest.raises(ConfigError, match=r"unknown config key 'data\.args\.rebuld'; did you mean 'data\.args\.rebuild'"):
        load_config(ROOT / "configs" / "maml_lil_mini_5shot.yaml", ["data.args.rebuld=true"])
