"""Meta-learning algorithms, registered in ``engine.registry.ALGORITHMS`` by explicit import."""

# explicit registration: maml, fomaml, anil, boil, lil_pretrain, mamlpp, reptile, protonet
from lil_meta.models.algorithms import anil, boil, lil_pretrain, maml, mamlpp, protonet, reptile  # noqa: F401
from lil_meta.models.algorithms.base import GBML

__all__ = ["GBML"]
