"""engine/precision.py: the run's precision sets PyTorch's switches when asked, refuses what the
device cannot run in one line, and gives the forward's autocast."""

from __future__ import annotations

import pytest
import torch

from lil_meta.engine.errors import ConfigError
from lil_meta.engine.precision import Precision, apply_precision, precision_switches


def test_fp32_turns_tf32_off_for_cudnn_and_cublas():
    apply_precision("fp32", "cpu")
    switches = precision_switches()
    assert switches.get("cudnn_conv_fp32_precision", "ieee") == "ieee"
    assert switches.get("cuda_matmul_fp32_precision", "ieee") == "ieee"
    assert switches["float32_matmul_precision"] == "highest"


@pytest.mark.parametrize("name, pattern", [
    ("fp16", r"solver\.precision: expected one of fp32, tf32, bf16; got 'fp16'"),
    ("tf32", r"solver\.precision=tf32: TF32 is an NVIDIA GPU format .*; this run is on cpu \(use fp32\)"),
])
def test_a_precision_the_device_cannot_run_is_one_line(name, pattern):
    with pytest.raises(ConfigError, match=pattern):
        apply_precision(name, "cpu")


def test_bf16_runs_the_convolutions_in_bfloat16_and_the_rest_as_it_was():
    conv, x = torch.nn.Conv2d(1, 2, 3), torch.rand(1, 1, 5, 5)
    with apply_precision("bf16", "cpu").autocast():
        y = conv(x)
    with Precision("fp32", "cpu").autocast():
        z = conv(x)
    assert y.dtype == torch.bfloat16 and z.dtype == torch.float32 and conv.weight.dtype == torch.float32
    torch.testing.assert_close(y.float(), z, rtol=2e-2, atol=2e-2)  # bfloat16 keeps 8 bits of mantissa
