"""models/algorithms/head_features.py: the network contract, checked when the algorithm is built,
one line naming what is missing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lil_meta.engine.errors import ConfigError
from lil_meta.models.algorithms.head_features import check_network
from lil_meta.models.backbones.conv4 import Conv4


class Doubled(nn.Module):
    """Has features and head but does not compute head(features(x))."""

    def __init__(self):
        super().__init__()
        self.features, self.head = nn.Flatten(), nn.Linear(4, 3)

    def forward(self, x):
        return 2 * self.head(self.features(x))


def test_the_contract_names_what_a_network_lacks():
    check_network(Conv4(num_classes=3, in_channels=1, image_size=16, hidden=2), torch.rand(2, 1, 16, 16))
    with pytest.raises(ConfigError, match=r"the network \(Sequential\) needs a \.head that is an nn\.Linear .*; "
                                          r"it has none"):
        check_network(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))
    no_body = nn.Module()
    no_body.head = nn.Linear(4, 3)
    with pytest.raises(ConfigError, match=r"needs a \.features module"):
        check_network(no_body)
    check_network(Doubled())  # structurally fine: only the probe can tell
    with pytest.raises(ConfigError, match=r"the network \(Doubled\) computes model\(x\) otherwise than "
                                          r"model\.head\(model\.features\(x\)\)"):
        check_network(Doubled(), torch.rand(2, 1, 2, 2))
