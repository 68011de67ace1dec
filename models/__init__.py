"""Networks and meta-learning algorithms, built from a config.

>>> algo = build_algorithm(cfg)   # nn.Module holding θ⁰; algo.model is the network
"""

from __future__ import annotations

if __name__ != "lil_meta.models":  # one import identity (docs/design.md §2)
    raise ImportError(f"{__name__!r} is the folder of lil_meta.models: import it as lil_meta.models")

from omegaconf import DictConfig, OmegaConf

from lil_meta.engine.components import (
    FOLLOWS,
    SHARED_WITH_PRETRAIN,
    component_arguments,
    fill_component_defaults,
)
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import ALGORITHMS, BACKBONES, import_extra_modules
from lil_meta.losses import build_losses
from lil_meta.models import algorithms, backbones  # noqa: F401  (explicit registration)
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.algorithms.chain import PretrainThen

__all__ = ["build_backbone", "build_algorithm", "fill_component_defaults", "component_arguments", "GBML",
           "PretrainThen"]


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def build_backbone(cfg: DictConfig):
    """The network f(x|θ) named by ``model.backbone``; head size and input shape come from ``data``."""
    return BACKBONES.build(
        _plain(cfg.model.backbone),
        "model.backbone",
        defaults={key: OmegaConf.select(cfg, source) for key, source in FOLLOWS["model.backbone"].items()},
    )


def build_algorithm(cfg: DictConfig) -> GBML | PretrainThen:
    """The meta-learner named by ``algorithm.name``, wrapping :func:`build_backbone`'s network;
    with ``pretrain.iters > 0``, a :class:`PretrainThen` of ``pretrain.algorithm`` and it over
    the same network."""
    import_extra_modules(cfg)
    losses = build_losses([_plain(spec) for spec in cfg.losses])
    main_spec = _plain(cfg.algorithm)
    network = build_backbone(cfg)
    main = ALGORITHMS.build(main_spec, "algorithm", network, losses=losses,
                            defaults={"metrics_period": cfg.log.period})
    head = getattr(getattr(network, "head", None), "out_features", None)
    if head is not None and head != cfg.data.way:
        raise ConfigError(f"model.backbone: the network's head has {head} outputs but the tasks are "
                          f"{cfg.data.way}-way (data.way); leave num_classes unset to follow data.way")
    iters = int(cfg.pretrain.iters)
    if iters <= 0:
        return main
    if iters > int(cfg.solver.max_iter):
        raise ConfigError(f"pretrain.iters: {iters} is more than solver.max_iter={cfg.solver.max_iter}")
    shared = {k: main_spec[k] for k in SHARED_WITH_PRETRAIN if k in main_spec}
    pretrain = ALGORITHMS.build(_plain(cfg.pretrain.algorithm), "pretrain.algorithm", network,
                                defaults={"metrics_period": cfg.log.period, **shared})
    return PretrainThen(pretrain, main, iters)
