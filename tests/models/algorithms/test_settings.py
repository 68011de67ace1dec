"""models/algorithms/settings.py: a GBML's groups are frozen values, built from config nodes key
by key, and the execution is resolved once per device."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lil_meta.engine.errors import ConfigError
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.algorithms.settings import (
    Diagnostics,
    Execution,
    ExecutionPolicy,
    Rates,
    as_group,
)
from lil_meta.models.backbones.conv4 import Conv4


def test_a_group_comes_from_a_node_key_by_key_and_is_frozen():
    execution = as_group(Execution, {"engine": "loop"}, "algorithm.execution")
    assert execution == Execution(engine="loop") and as_group(Rates, None, "algorithm.rates") == Rates()
    with pytest.raises(dataclasses.FrozenInstanceError):
        execution.engine = "vmap"  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"algorithm\.diagnostics\.period: unknown setting \(accepted: "
                                          r"hessian_ratio, linearized_metrics, metrics_period\)"):
        as_group(Diagnostics, {"period": 3}, "algorithm.diagnostics")
    with pytest.raises(ConfigError, match=r"algorithm\.rates\.mode: expected one of scalar, per_tensor, "
                                          r"per_element; got 'global'"):
        Rates(mode="global")


def test_the_execution_is_resolved_once_per_device():
    algo = GBML(Conv4(num_classes=5, in_channels=1, image_size=16, hidden=4))
    cpu = algo.policy(torch.device("cpu"))
    assert cpu == ExecutionPolicy(engine="loop", channels_last="all", task_chunk=1)
    assert algo.policy(torch.device("cpu")) is cpu  # resolved once
    assert algo.policy(torch.device("cuda")) == ExecutionPolicy(engine="vmap", channels_last="none", task_chunk=0)
    assert algo.auto_task_chunk(torch.device("cpu")) == 1
