"""The algorithm's Python API: output dict, presets, train/eval steps, input validation."""

import pytest
import torch

from lil_meta.datasets.task_batch import TaskBatch
from lil_meta.engine.config import load_config
from lil_meta.models import build_algorithm
from lil_meta.models.algorithms.base import GBML
from tests_helpers import ROOT, tiny_batch


@pytest.fixture
def algo():
    cfg = load_config(ROOT / "configs" / "maml_5shot.yaml", ["data.image_size=16", "model.backbone.hidden=8"])
    torch.manual_seed(0)
    return build_algorithm(cfg)


def test_build_from_config_and_output_keys(algo):
    assert isinstance(algo, GBML) and not algo.first_order
    out = algo(tiny_batch())
    assert {"loss", "loss_ce", "acc", "acc_init", "task_acc"} <= out.keys()
    assert out["loss"].requires_grad and out["loss"].dim() == 0
    assert out["task_acc"].shape == (2,) and 0 <= out["acc"].item() <= 1
    out["loss"].backward()
    assert all(p.grad is not None for p in algo.parameters())


def test_fomaml_preset_is_first_order():
    cfg = load_config(ROOT / "configs" / "fomaml_5shot.yaml", ["data.image_size=16"])
    assert build_algorithm(cfg).first_order


def test_eval_mode_uses_test_steps_and_adaptation_changes_predictions(algo):
    batch = tiny_batch()
    algo.inner_steps_test = 0
    with torch.no_grad():
        out = algo.eval()(batch)
    assert out["acc"].item() == pytest.approx(out["acc_init"].item())
    algo.inner_steps_test = 5
    with torch.no_grad():
        out = algo(batch)
    assert out["acc"].item() > out["acc_init"].item()


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda b: b._replace(support_x=b.support_x[0]), r"TaskBatch.support_x: expected 5 dims"),
        (lambda b: b._replace(query_y=b.query_y.float()), r"TaskBatch.query_y: expected int64 labels"),
        (lambda b: b._replace(support_y=b.support_y[:, :3]), r"TaskBatch.support_y: expected shape \(2, 10\)"),
        (lambda b: b._replace(query_x=b.query_x[:1]), r"TaskBatch.query_x: 1 tasks but support_x has 2"),
        (lambda b: b._replace(query_y=b.query_y + 5), r"TaskBatch.query_y: labels must lie in 0..4"),
        (lambda b: b._replace(support_y=b.support_y % 3, query_y=b.query_y % 3), r"tasks are 3-way but the model's head has 5 outputs"),
    ],
)
def test_bad_batches_raise_value_error_naming_the_tensor(algo, mutate, message):
    with pytest.raises(ValueError, match=message):
        algo(mutate(tiny_batch()))


def test_unknown_engine_is_refused(algo):
    with pytest.raises(ValueError, match="algorithm.execution.engine"):
        GBML(algo.model, execution={"engine": "fast"})


def test_task_batch_is_a_plain_tuple():
    batch = tiny_batch()
    assert isinstance(batch, TaskBatch) and len(tuple(batch)) == 4
