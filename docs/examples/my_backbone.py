"""A two-block convolutional backbone registered from outside the package.

The network contract: ``features`` (images -> flat features) and ``head`` (an ``nn.Linear``)
with ``forward(x) == head(features(x))``. The project's layers keep BatchNorm on the current
batch's statistics (the MAML convention) and save little for second order.
"""

from torch import nn

from lil_meta.engine.registry import BACKBONES
from lil_meta.models.backbones.layers import TaskBatchNorm2d, TaskMaxPool2d
from lil_meta.models.backbones.task_conv import TaskConv2d


@BACKBONES.register("conv2")
class Conv2(nn.Module):
    def __init__(self, num_classes: int = 5, in_channels: int = 3, image_size: int = 84, hidden: int = 32):
        super().__init__()  # num_classes, in_channels, image_size follow data.way, .channels, .image_size
        block = lambda i, o: [TaskConv2d(i, o, 3, padding=1), TaskBatchNorm2d(o), TaskMaxPool2d(4), nn.ReLU()]  # noqa: E731
        self.features = nn.Sequential(*block(in_channels, hidden), *block(hidden, hidden), nn.Flatten())
        self.head = nn.Linear(hidden * (image_size // 16) ** 2, num_classes)

    def forward(self, x):
        return self.head(self.features(x))
