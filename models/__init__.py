"""Networks and meta-learning algorithms, built from a config.

>>> algo = build_algorithm(cfg)   # nn.Module holding θ⁰; algo.model is the network
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from engine.config import import_extra_modules
from engine.registry import ALGORITHMS, BACKBONES
from losses import build_losses
from models import algorithms, backbones  # noqa: F401  (explicit registration)
from models.algorithms.base import GBML

__all__ = ["build_backbone", "build_algorithm", "GBML"]


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def build_backbone(cfg: DictConfig):
    """The network f(x|θ) named by ``model.backbone``; head size and input shape come from ``data``."""
    return BACKBONES.build(
        _plain(cfg.model.backbone),
        "model.backbone",
        defaults={
            "num_classes": cfg.data.way,
            "in_channels": cfg.data.channels,
            "image_size": cfg.data.image_size,
        },
    )


def build_algorithm(cfg: DictConfig) -> GBML:
    """The meta-learner named by ``algorithm.name``, wrapping :func:`build_backbone`'s network."""
    import_extra_modules(cfg)
    losses = build_losses([_plain(spec) for spec in cfg.losses])
    return ALGORITHMS.build(
        _plain(cfg.algorithm), "algorithm", build_backbone(cfg),
        losses=losses, defaults={"metrics_period": cfg.log.period},
    )
