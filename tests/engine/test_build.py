"""engine/build.py: a run's components are a pure function of its config — the same config
builds the same weights and tasks, and building writes nothing."""

from __future__ import annotations

import torch

from lil_meta.engine.build import build_components, build_training
from lil_meta.engine.config import load_config
from tests_helpers import ROOT


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_the_same_config_builds_the_same_components_and_writes_nothing(tmp_path):
    cfg = load_config(ROOT / "tests" / "configs" / "tiny.yaml", [f"output_dir={tmp_path / 'run'}"])
    torch.manual_seed(123)  # whatever the caller's random state, the build seeds from the config
    first = build_components(cfg, torch.device("cpu"))
    torch.rand(10)
    second = build_components(cfg, torch.device("cpu"))
    a, b = _state(first.algorithm), _state(second.algorithm)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(first.sampler.next_batch().support_x, second.sampler.next_batch().support_x)
    assert len(first.test_tasks) == cfg.test.tasks and first.optimizer is not None
    assert not (tmp_path / "run").exists()
    evaluation = build_components(cfg, torch.device("cpu"), train=False)
    assert evaluation.optimizer is None and evaluation.sampler is None


def test_the_training_pair_alone_has_the_runs_initial_weights():
    cfg = load_config(ROOT / "tests" / "configs" / "tiny.yaml")
    algorithm, optimizer = build_training(cfg, torch.device("cpu"))
    run = build_components(cfg, torch.device("cpu")).algorithm
    assert all(torch.equal(p, q) for p, q in zip(algorithm.parameters(), run.parameters(), strict=True))
    assert isinstance(optimizer, torch.optim.Adam) and not optimizer.defaults.get("fused")  # the CPU default
