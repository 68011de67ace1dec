"""Conv4: the standard four-block few-shot backbone (Finn et al., 2017; paper §6)."""

from __future__ import annotations

import torch
from torch import nn

from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import BACKBONES
from lil_meta.models.backbones.layers import TaskBatchNorm2d, TaskMaxPool2d
from lil_meta.models.backbones.task_conv import TaskConv2d


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3×3 → BatchNorm (batch statistics only) → maxpool 2 → ReLU.

    The convolution has no bias: the BatchNorm shift that follows makes it redundant (its
    gradient is exactly zero). Pooling comes before the ReLU: both are monotone, so
    ``relu(maxpool(x)) == maxpool(relu(x))`` with the same gradients of every order, and the
    ReLU then runs on a quarter of the elements (the usual order of the Conv4 papers is
    conv → BN → ReLU → pool; the function is the same).
    """
    return nn.Sequential(
        TaskConv2d(in_channels, out_channels, kernel_size=3, padding=1),
        TaskBatchNorm2d(out_channels),
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
    """

    def __init__(self, num_classes: int = 5, in_channels: int = 3, image_size: int = 84, hidden: int = 64):
        super().__init__()
        if image_size < 16:
            raise ConfigError(f"data.image_size: conv4 needs >= 16 (four 2x poolings), got {image_size}")
        if hidden < 1 or num_classes < 1 or in_channels < 1:
            raise ConfigError(
                f"model.backbone: conv4 needs positive hidden/num_classes/in_channels, got "
                f"{hidden}/{num_classes}/{in_channels}"
            )
        self.features = nn.Sequential(
            conv_block(in_channels, hidden),
            conv_block(hidden, hidden),
            conv_block(hidden, hidden),
            conv_block(hidden, hidden),
            nn.Flatten(),
        )
        side = image_size
        for _ in range(4):
            side //= 2
        self.head = nn.Linear(hidden * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
