"""MAML with a proximal term: a GBML variant registered from outside the package.

The outer loss gains ``prox · ‖θˢ − θ⁰‖²`` (mean over tasks), which keeps the adapted weights
near the meta-parameters. A config that lists this module in ``extra_modules`` imports it
before building, so ``algorithm.name: prox_maml`` resolves (docs/new_variant.md).
"""

from lil_meta.engine.registry import ALGORITHMS
from lil_meta.models.algorithms.base import GBML


@ALGORITHMS.register("prox_maml")
class ProxMAML(GBML):
    """MAML + ``prox · ‖θˢ − θ⁰‖²``; every other argument is GBML's (``**kwargs``)."""

    def __init__(self, model, prox: float = 0.01, **kwargs):
        super().__init__(model, **kwargs)
        self.prox = float(prox)

    def extra_terms(self, per_task):
        if "disp_norm" not in per_task:  # no inner step (S = 0): no displacement
            return {}
        return {"prox": self.prox * per_task["disp_norm"].square().mean()}
