"""benchmarks/bench_terms.py: SHOT's per-task work and its reference trajectory timed inside the step."""

import json

import pytest
import torch

import bench_terms
from lil_meta.engine.adapted_task import AdaptedTask
from tests_helpers import ROOT

TINY = ["model.backbone.hidden=4", "solver.meta_batch=2", "data.query=2", "algorithm.inner_steps=1",
        "algorithm.diagnostics.metrics_period=0"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny steps: one thread is fastest, and on a shared machine far faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_splits_shot_into_its_reference_trajectory_and_the_rest(capsys):
    retrace = AdaptedTask.retrace
    argv = ["--config-file", str(ROOT / "configs/maml_shot_5shot.yaml"),
            "--config-file", str(ROOT / "configs/maml_shot_one_step_5shot.yaml"),
            "--iters", "1", "--warmup", "0", "--json", *TINY]
    assert bench_terms.main(argv) == 0
    assert AdaptedTask.retrace is retrace  # put back
    shot, one_step = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (shot["term"], one_step["term"]) == ("shot", "shot_one_step")
    assert 0 < shot["retrace_s"] < shot["term_s"] < shot["s_per_iter"]
    assert abs(shot["rest_s"] - (shot["term_s"] - shot["retrace_s"])) < 1e-12
    assert one_step["retrace_s"] == 0 and 0 < one_step["term_s"] < one_step["s_per_iter"]


def test_a_config_without_such_terms_says_so(capsys):
    argv = ["--config-file", str(ROOT / "configs/maml_5shot.yaml"), "--iters", "1", "--warmup", "0", *TINY]
    assert bench_terms.main(argv) == 0
    assert "maml_5shot: no term with per-task work" in capsys.readouterr().err
