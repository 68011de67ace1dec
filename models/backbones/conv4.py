"""Conv4: the standard four-block few-shot backbone (Finn et al., 2017; paper §6)."""

from __future__ import annotations

import torch
from torch import nn

from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import BACKBONES
from lil_meta.models.backbones.layers import StepSequential, TaskBatchNorm2d, TaskMaxPool2d
from lil_meta.models.backbones.task_conv import TaskConv2d


def conv_block(in_channels: int, out_channels: int, bn_steps: int = 0) -> StepSequential:
    """conv3×3 → BatchNorm (batch statistics only) → maxpool 2 → ReLU.

    The convolution has no bias: the BatchNorm shift that follows makes it redundant (its
    gradient is exactly zero). Pooling comes before the ReLU: both are monotone, so
    ``relu(maxpool(x)) == maxpool(relu(x))`` with the same gradients of every order, and the
    ReLU then runs on a quarter of the elements (the usual order of the Conv4 papers is
    conv → BN → ReLU → pool; the function is the same). ``bn_steps`` > 0: per-step BatchNorm
    weights (:class:`TaskBatchNorm2d`).
    """
    return StepSequential(
        TaskConv2d(in_channels, out_channels, kernel_size=3, padding=1),
        TaskBatchNorm2d(out_channels, steps=bn_steps),
        TaskMaxPool2d(2),
        nn.ReLU(inplace=False),
    )


@BACKBONES.register("conv4")
class Conv4(nn.Module):
    """4 × [conv3×3 (``hidden`` channels), BN, maxpool 2, ReLU], flatten, linear N-way head.

    BatchNorm follows the MAML convention: ``track_running_stats=False``, so both the inner and
    the outer loop normalise with the statistics of the current batch (one task's support or
    query set), in training and at test time alike (:class:`TaskBatchNorm2d`). The network is split into ``features``
    (the body) and ``head`` so that algorithms can adapt either part alone (ANIL, BOIL).

    ``per_step_bn``: MAML++'s per-step BatchNorm weights and biases (BNWB), ``[bn_steps, C]``
    each, ``bn_steps`` following ``algorithm.inner_steps``; the network then takes the inner
    step, ``model(x, step=k)`` (``takes_step``).
    """

    def __init__(self, num_classes: int = 5, in_channels: int = 3, image_size: int = 84, hidden: int = 64, *,
                 per_step_bn: bool = False, bn_steps: int = 1):
        super().__init__()
        rows = check_bn_steps(per_step_bn, bn_steps)
        if image_size < 16:
            raise ConfigError(f"data.image_size: conv4 needs >= 16 (four 2x poolings), got {image_size}")
        if hidden < 1 or num_classes < 1 or in_channels < 1:
            raise ConfigError(
                f"model.backbone: conv4 needs positive hidden/num_classes/in_channels, got "
                f"{hidden}/{num_classes}/{in_channels}"
            )
        self.takes_step = bool(per_step_bn)
        self.features = StepSequential(
            conv_block(in_channels, hidden, rows),
            conv_block(hidden, hidden, rows),
            conv_block(hidden, hidden, rows),
            conv_block(hidden, hidden, rows),
            nn.Flatten(),
        )
        side = image_size
        for _ in range(4):
            side //= 2
        self.head = nn.Linear(hidden * side * side, num_classes)

    def forward(self, x: torch.Tensor, step: int | None = None) -> torch.Tensor:
        return self.head(self.features(x, step=step))


def check_bn_steps(per_step_bn: bool, bn_steps: int) -> int:
    """The rows of each BatchNorm's weights: ``bn_steps`` with ``per_step_bn``, else 0 (plain)."""
    if per_step_bn and bn_steps < 1:
        raise ConfigError(f"model.backbone.bn_steps: per-step BatchNorm (per_step_bn) needs >= 1 rows, one per "
                          f"training inner step; got {bn_steps} (it follows algorithm.inner_steps)")
    return int(bn_steps) if per_step_bn else 0
