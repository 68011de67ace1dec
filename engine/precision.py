"""The run's arithmetic precision (``solver.precision``), set once when the run is set up.

- ``fp32`` (the default): IEEE fp32 convolutions and matrix products. PyTorch lets cuDNN run
  fp32 convolutions in TF32 unless told otherwise; three second-order inner steps at inner lr
  0.5 amplify a relative rounding error by 10²–10³, so TF32's ~5e-4 can move the
  meta-gradient by several percent (docs/design.md, "Precision").
- ``tf32``: TF32 convolutions and matrix products (NVIDIA GPUs from Ampere on).
- ``bf16``: the forward convolutions and matrix products under ``torch.autocast`` in bfloat16;
  BatchNorm, the losses and the parameters stay fp32, so the inner-loop gradients gᵏ (taken
  with respect to fp32 parameters) and the trajectory norms are fp32.

:func:`apply_precision` sets PyTorch's switches for the run (never at import) and returns a
:class:`Precision` whose :meth:`~Precision.autocast` the trainer and the evaluation enter around
each forward. :func:`precision_switches` reads every switch back, for the log and
``results.json``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from lil_meta.engine.errors import ConfigError

__all__ = ["PRECISIONS", "Precision", "apply_precision", "precision_switches"]

PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class Precision:
    """A run's precision on its device."""

    name: str = "fp32"
    device_type: str = "cpu"

    def autocast(self):
        """The context a forward pass runs in: ``torch.autocast`` for ``bf16``, else nothing."""
        if self.name != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)


def check_precision(name: str, device: torch.device) -> None:
    """One :class:`ConfigError` line when ``name`` is unknown or impossible on ``device``."""
    if name not in PRECISIONS:
        raise ConfigError(f"solver.precision: expected one of {', '.join(PRECISIONS)}; got '{name}'")
    if name == "tf32":
        if device.type != "cuda":
            raise ConfigError(f"solver.precision=tf32: TF32 is an NVIDIA GPU format (Ampere and later); this run "
                              f"is on {device.type} (use fp32)")
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            raise ConfigError(f"solver.precision=tf32: {torch.cuda.get_device_name(device)} (compute capability "
                              f"{major}.{minor}) has no TF32; it needs 8.0 or later (use fp32)")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"solver.precision=bf16: {torch.cuda.get_device_name(device)} does not support "
                          "bfloat16 (use fp32)")
    if name == "bf16" and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"solver.precision=bf16: autocast to bfloat16 runs on cuda and cpu; this run is on "
                          f"{device.type} (use fp32)")


def _set_tf32(on: bool) -> None:
    """TF32 on or off for cuDNN convolutions and cuBLAS matrix products, through the
    ``fp32_precision`` switches where this torch has them (mixing them with the older
    ``allow_tf32`` flags is an error there), else through those flags."""
    cudnn_conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    if cudnn_conv is not None:
        value = "tf32" if on else "ieee"
        # all of cuDNN's (its RNNs too), so that a reader of the older flags sees one answer
        for switch in (torch.backends.cudnn, torch.backends.cudnn.conv, torch.backends.cudnn.rnn,
                       torch.backends.cuda.matmul):
            switch.fp32_precision = value
    else:
        torch.backends.cudnn.allow_tf32 = on
        torch.backends.cuda.matmul.allow_tf32 = on


def apply_precision(name: str, device: torch.device | str) -> Precision:
    """Check ``name`` against ``device`` and set PyTorch's switches for it (module doc)."""
    device = torch.device(device)
    check_precision(name, device)
    _set_tf32(name == "tf32")
    return Precision(name, device.type)


def precision_switches() -> dict[str, object]:
    """Every switch that decides how fp32 work runs on a GPU, as this process has them now."""
    switches: dict[str, object] = {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    cudnn_conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    if cudnn_conv is not None:
        switches["cudnn_conv_fp32_precision"] = cudnn_conv
        switches["cuda_matmul_fp32_precision"] = torch.backends.cuda.matmul.fp32_precision
    else:
        switches["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
        switches["cuda_matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return switches
