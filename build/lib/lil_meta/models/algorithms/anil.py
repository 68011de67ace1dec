"""ANIL (Raghu et al., 2020): Almost No Inner Loop — only the head adapts.

A preset of :class:`GBML` with ``adapt="head"``. The body is held fixed in the inner loop and
run once per task (support and query), the head adapts on those features alone; the outer loss
trains both (:meth:`GBML.task_network`).
"""

from lil_meta.engine.registry import ALGORITHMS
from lil_meta.models.algorithms.base import GBML

ALGORITHMS.register("anil", GBML, adapt="head")
