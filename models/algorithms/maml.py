"""MAML and FOMAML (Finn et al., 2017) as presets of :class:`GBML` (all parameters adapt)."""

from lil_meta.engine.registry import ALGORITHMS
from lil_meta.models.algorithms.base import GBML

ALGORITHMS.register("maml", GBML, first_order=False)
ALGORITHMS.register("fomaml", GBML, first_order=True)
