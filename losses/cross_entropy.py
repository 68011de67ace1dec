"""The task loss: cross-entropy on the query set after adaptation."""

import torch
import torch.nn.functional as F

from lil_meta.engine.registry import LOSSES
from lil_meta.losses.base import OuterInputs, OuterLoss


@LOSSES.register("cross_entropy")
class CrossEntropy(OuterLoss):
    """``CE(f(xq|θˢ), yq)``, mean over query examples and tasks."""

    key = "ce"

    def value(self, inputs: OuterInputs) -> torch.Tensor:
        return F.cross_entropy(inputs.logits.flatten(0, 1), inputs.query_y.flatten())
