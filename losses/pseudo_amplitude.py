"""LIL's pseudo-amplitude loss (paper eq. 9)."""

import torch

from lil_meta.engine.registry import LOSSES
from lil_meta.losses.base import OuterInputs, OuterLoss


@LOSSES.register("pseudo_amplitude")
class PseudoAmplitudeLoss(OuterLoss):
    """The inner-loop trajectory length ``T = Σₖ ‖θᵏ⁺¹ − θᵏ‖``, mean over tasks.

    A proximal-like term: shorter trajectories of equal displacement have less varying
    gradient norms. Under first-order variants T carries no gradient (the steps are detached).
    """

    key = "amp"
    metric = "traj_len"

    def value(self, inputs: OuterInputs) -> torch.Tensor:
        return inputs.trajectory.length.mean()
