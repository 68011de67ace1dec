"""MAML with a proximal term: a GBML variant registered from outside the package.

The outer loss gains ``prox · ‖θˢ − θ⁰‖²`` (mean over tasks), which keeps the adapted weights
near the meta-parameters. A config that lists this module in ``extra_modules`` imports it
before building, so ``algorithm.name: prox_maml`` resolves (docs/new_variant.md).
"""

from lil_meta.engine.registry import ALGORITHMS
from lil_meta.losses import OuterLoss
from lil_meta.losses.cross_entropy import CrossEntropy
from lil_meta.models.algorithms.base import GBML


class Proximal(OuterLoss):
    key = "prox"

    def value(self, inputs):  # ‖θˢ − θ⁰‖ per task, differentiable where the inner loop is
        return inputs.trajectory.disp_norm.square().mean()


@ALGORITHMS.register("prox_maml")
class ProxMAML(GBML):
    """MAML + ``prox · ‖θˢ − θ⁰‖²``; every other argument is GBML's (``**kwargs``)."""

    def __init__(self, model, prox: float = 0.01, losses=None, **kwargs):
        super().__init__(model, losses=[*(losses or [CrossEntropy()]), Proximal(prox)], **kwargs)
