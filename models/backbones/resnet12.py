"""ResNet-12: the four-block residual few-shot backbone (Oreshkin et al., 2018; Lee et al., 2019).

Paper protocol (``docs/design.md``): widths 64-128-256-512 (TADAM's, as in BOIL's code), inner lr 0.3;
MetaOptNet's wider 64-160-320-640 is ``model.backbone.widths=[64,160,320,640]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import BACKBONES
from lil_meta.models.backbones.conv4 import check_bn_steps
from lil_meta.models.backbones.layers import StepSequential, TaskBatchNorm2d, TaskMaxPool2d
from lil_meta.models.backbones.task_conv import TaskConv2d


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al., 2018): zero ``block_size``² squares of a feature map.

    In training mode each position starts a dropped square with probability γ, chosen so that
    about ``rate`` of the map is dropped, and the kept activations are rescaled by
    ``numel / kept``. In eval mode, and at ``rate = 0``, it is the identity. Masks are drawn
    afresh at every call (every inner step too), per task under vmap (``randomness="different"``).
    """

    def __init__(self, rate: float, block_size: int):
        super().__init__()
        self.rate, self.block_size = float(rate), int(block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        size = min(self.block_size, x.shape[-1], x.shape[-2])
        h, w = x.shape[-2:]
        gamma = self.rate / size**2 * (h * w) / ((h - size + 1) * (w - size + 1))
        seeds = torch.bernoulli(torch.full((*x.shape[:-2], h - size + 1, w - size + 1), gamma,
                                           dtype=x.dtype, device=x.device))
        pad = size - 1
        dropped = F.max_pool2d(F.pad(seeds, (pad, pad, pad, pad)), size, stride=1)
        keep = 1.0 - dropped
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))

    def extra_repr(self) -> str:
        return f"rate={self.rate}, block_size={self.block_size}"


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3, bn_steps: int = 0) -> list[nn.Module]:
    """conv (no bias: the BatchNorm shift makes it redundant) → BatchNorm (batch statistics;
    ``bn_steps`` > 0: per-step weights)."""
    return [TaskConv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            TaskBatchNorm2d(out_channels, steps=bn_steps)]


class ResidualBlock(nn.Module):
    """3 × [conv3×3, BN] with LeakyReLU(0.1) between them and after the residual add, a
    1×1 conv + BN shortcut, then max-pool 2 and (optionally) DropBlock.

    The pool runs before the last LeakyReLU: both are monotone, so the function and its
    gradients are those of activation-then-pool, at a quarter of the activation's work."""

    takes_step = True

    def __init__(self, in_channels: int, out_channels: int, drop_rate: float = 0.0, block_size: int = 1,
                 bn_steps: int = 0):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.body = StepSequential(
            *conv_bn(in_channels, out_channels, bn_steps=bn_steps), act(),
            *conv_bn(out_channels, out_channels, bn_steps=bn_steps), act(),
            *conv_bn(out_channels, out_channels, bn_steps=bn_steps),
        )
        self.shortcut = StepSequential(*conv_bn(in_channels, out_channels, kernel_size=1, bn_steps=bn_steps))
        self.act = act()
        self.pool = TaskMaxPool2d(2)
        self.drop = DropBlock(drop_rate, block_size) if drop_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, step: int | None = None) -> torch.Tensor:
        return self.drop(self.act(self.pool(self.body(x, step=step) + self.shortcut(x, step=step))))


@BACKBONES.register("resnet12")
class ResNet12(nn.Module):
    """4 residual blocks (``widths``, default 64-128-256-512), global average pool, linear head.

    Each block: three conv3×3 + BN + LeakyReLU(0.1) (the last activation after the residual
    add), a 1×1 conv + BN shortcut, max-pool 2. The image side halves four times (84 → 42 →
    21 → 10 → 5; 28 → 14 → 7 → 3 → 1), so ``image_size`` must be at least 16; the global
    average pool makes the head ``widths[-1]``-dimensional at any size.

    ``drop_block`` > 0 adds DropBlock with that rate after the last two blocks (block size 5,
    clipped to the feature map, as in MetaOptNet); off by default, and at 0 the blocks hold
    no DropBlock module at all. It is active in ``train()`` mode only.

    BatchNorm follows the MAML convention: ``track_running_stats=False``, every batch (one
    task's support or query set) is normalised by its own statistics, in training and at test
    time alike (:class:`TaskBatchNorm2d`). ``features`` (the body, images → flat features) and
    ``head`` (``nn.Linear``) are separate so algorithms can adapt either alone (ANIL, BOIL).
    ``per_step_bn`` and ``bn_steps``: MAML++'s per-step BatchNorm weights, as in :class:`Conv4`.
    """

    def __init__(self, num_classes: int = 5, in_channels: int = 3, image_size: int = 84,
                 widths: Sequence[int] = (64, 128, 256, 512), drop_block: float = 0.0, *, per_step_bn: bool = False,
                 bn_steps: int = 1):
        super().__init__()
        rows = check_bn_steps(per_step_bn, bn_steps)
        self.takes_step = bool(per_step_bn)
        widths = [int(w) for w in widths]
        if image_size < 16:
            raise ConfigError(f"data.image_size: resnet12 needs >= 16 (four 2x poolings), got {image_size}")
        if len(widths) != 4 or min(widths) < 1 or num_classes < 1 or in_channels < 1:
            raise ConfigError(f"model.backbone: resnet12 needs four positive widths and positive "
                              f"num_classes/in_channels, got {widths}/{num_classes}/{in_channels}")
        if not 0.0 <= drop_block < 1.0:
            raise ConfigError(f"model.backbone.drop_block: a rate in [0, 1), got {drop_block}")
        blocks, channels = [], in_channels
        for i, width in enumerate(widths):
            blocks.append(ResidualBlock(channels, width, drop_block if i >= 2 else 0.0, 5, bn_steps=rows))
            channels = width
        self.features = StepSequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, num_classes)
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor, step: int | None = None) -> torch.Tensor:
        return self.head(self.features(x, step=step))
