"""Meta-learning algorithms, registered in ``engine.registry.ALGORITHMS`` by explicit import."""

from models.algorithms import maml  # noqa: F401  (registers maml, fomaml)
from models.algorithms.base import GBML

__all__ = ["GBML"]
