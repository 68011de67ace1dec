"""Meta-learning algorithms, registered in ``engine.registry.ALGORITHMS`` by explicit import."""

# explicit registration: maml, fomaml, anil, boil, lil_pretrain
from models.algorithms import anil, boil, lil_pretrain, maml  # noqa: F401
from models.algorithms.base import GBML

__all__ = ["GBML"]
