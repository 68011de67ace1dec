"""Meta-learning algorithms, registered in ``engine.registry.ALGORITHMS`` by explicit import."""

from models.algorithms import anil, boil, maml  # noqa: F401  (registers maml, fomaml, anil, boil)
from models.algorithms.base import GBML

__all__ = ["GBML"]
