"""tools/benchmark.py: the naive and the ``higher`` baselines compute MAML's meta-gradient (so the
speed ratios compare like with like), --json carries the documented keys, --isolate gives each
row a process of its own."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.backbones.conv4 import Conv4
from lil_meta.models.backbones.layers import TaskBatchNorm2d, TaskMaxPool2d
from lil_meta.models.backbones.task_conv import TaskConv2d
from lil_meta.tools import benchmark
from lil_meta.tools.bench_rows import NaiveMAML, QueryFloor
from lil_meta.tools.higher_reference import HigherMAML
from tests_helpers import ROOT, tiny_batch


class FakeRunner:
    def __init__(self, algo, batch):
        self.algo, self.batch, self.device = algo, batch, torch.device("cpu")
        self.cfg = type("Cfg", (), {"solver": type("S", (), {"lr": 1e-3, "meta_batch": batch.num_tasks})()})()


@pytest.mark.parametrize("first_order", [False, True])
def test_naive_baseline_has_the_engines_meta_gradient(first_order):
    torch.manual_seed(0)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=6).double()
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in tiny_batch(tasks=3, size=16)))
    algo = GBML(model, inner_lr=0.4, inner_steps=2, first_order=first_order, execution={"engine": "loop"})
    naive = NaiveMAML(FakeRunner(algo, batch))  # a copy of the weights, no gradients yet
    layers = [type(m) for m in naive.model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.MaxPool2d))]
    assert layers == [torch.nn.BatchNorm2d, torch.nn.MaxPool2d] * 4  # PyTorch's stock layers, not this project's
    algo(batch)["loss"].backward()
    naive.loss().backward()
    for (name, p), q in zip(model.named_parameters(), naive.model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_query_floor_is_the_query_loss_at_theta0():
    """--floor times the query pass alone: the gradient of the query loss at θ⁰, no inner loop."""
    torch.manual_seed(0)
    model = Conv4(num_classes=5, in_channels=3, image_size=16, hidden=6).double()
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in tiny_batch(tasks=3, size=16, channels=3)))
    algo = GBML(model, inner_lr=0.4, inner_steps=2, execution={"engine": "loop"})
    floor = QueryFloor(FakeRunner(algo, batch))
    assert floor.batch.query_x[0].is_contiguous(memory_format=torch.channels_last)  # the engine's layout
    algo.inner_steps = 0
    algo(batch)["loss"].backward()
    floor.loss().backward()
    for (name, p), q in zip(model.named_parameters(), floor.model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_json_output_has_the_documented_keys(capsys, monkeypatch):
    monkeypatch.setenv("LIL_CPU_MALLOC", "system")  # leave this test process's malloc alone
    monkeypatch.setattr("lil_meta.engine.cpu_memory._applied", None)
    config = str(ROOT / "configs" / "maml_1shot.yaml")
    argv = ["--config-file", config, "--config-file", f"{config} algorithm.execution.channels_last=none", "--iters", "1",
            "--warmup", "0", "--json", "--floor", "model.backbone.hidden=4", "data.image_size=16",
            "data.channels=3", "solver.meta_batch=2"]
    assert benchmark.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["config"] for r in rows] == ["maml_1shot", "maml_1shot algorithm.execution.channels_last=none",
                                           "naive per-task MAML", "query pass only (floor)"]
    for row in rows:
        assert {"tasks_per_s", "s_per_iter", "peak_mem_mb", "path", "x_naive", "cpu_malloc"} <= row.keys()
        assert row["tasks_per_s"] == pytest.approx(2 / row["s_per_iter"])
        assert "system defaults" in row["cpu_malloc"]
    assert [r["path"] for r in rows] == ["cpu/loop/nhwc=all", "cpu/loop/nhwc=none", "cpu/naive-loop",
                                         "cpu/query-only/nhwc=all"]


def test_higher_baseline_has_the_engines_meta_gradient():
    """--higher: innerloop_ctx, one task at a time, a backward per task, stock layers."""
    pytest.importorskip("higher")
    torch.manual_seed(0)
    model = Conv4(num_classes=5, in_channels=1, image_size=16, hidden=4).double()
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in tiny_batch(tasks=2, size=16)))
    algo = GBML(model, inner_lr=0.4, inner_steps=2, execution={"engine": "loop"})
    ref = HigherMAML(FakeRunner(algo, batch))
    assert not any(isinstance(m, (TaskBatchNorm2d, TaskMaxPool2d, TaskConv2d)) for m in ref.model.modules())
    out = algo(batch, step=1)
    out["loss"].backward()
    torch.testing.assert_close(ref.accumulate(), out["loss"].detach(), rtol=1e-12, atol=0)
    for (name, p), q in zip(model.named_parameters(), ref.model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_higher_without_the_package_is_one_error_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "higher", None)  # import higher now raises ImportError
    argv = ["--config-file", str(ROOT / "configs" / "maml_1shot.yaml"), "--higher", "--iters", "1"]
    assert benchmark.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --higher: the 'higher' package is not installed")


def test_isolated_rows_report_their_own_process(capsys, monkeypatch):
    """--isolate runs each row in a fresh process (its peak RSS is its own) with the --malloc
    setting passed on; a bad config is one error line before any row runs."""
    monkeypatch.setattr("lil_meta.engine.cpu_memory._applied", None)
    monkeypatch.setenv("LIL_CPU_MALLOC", "")  # --malloc sets it for this process and its rows
    config = str(ROOT / "configs" / "maml_1shot.yaml")
    tiny = ["model.backbone.hidden=4", "data.image_size=16", "solver.meta_batch=2"]
    assert benchmark.main(["--config-file", config, "--isolate", "--no-baseline", "--json", "--iters", "1",
                           "--warmup", "0", "--malloc", "system", *tiny]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["peak_scope"] == "own process" and row["peak_mem_mb"] > 0
    assert "system defaults (LIL_CPU_MALLOC=system)" in row["cpu_malloc"]
    assert benchmark.main(["--config-file", config, "--isolate", "solver.task_chunk=-1"]) == 2
    assert capsys.readouterr().err.startswith("error: solver.task_chunk: expected auto or an integer >= 0")
