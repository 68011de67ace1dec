"""BOIL (Oh et al., 2021): Body Only update in the Inner Loop — the head is frozen there.

A preset of :class:`GBML` with ``adapt="body"``. The head is learned by the outer loss only;
the inner loop differentiates with respect to the body alone (``torch.func.grad`` over the
adapted dict), so no head gradient is computed there.
"""

from lil_meta.engine.registry import ALGORITHMS
from lil_meta.models.algorithms.base import GBML

ALGORITHMS.register("boil", GBML, adapt="body")
