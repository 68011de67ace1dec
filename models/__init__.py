"""Networks and meta-learning algorithms, built from a config.

>>> algo = build_algorithm(cfg)   # nn.Module holding θ⁰; algo.model is the network
"""

from __future__ import annotations

if __name__ != "lil_meta.models":  # one import identity (docs/design.md §2)
    raise ImportError(f"{__name__!r} is the folder of lil_meta.models: import it as lil_meta.models")

import torch
from omegaconf import DictConfig, OmegaConf

from lil_meta.engine.components import (
    FOLLOWS,
    SHARED_WITH_PRETRAIN,
    SUPPLIED,
    component_arguments,
    fill_component_defaults,
)
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.registry import ALGORITHMS, BACKBONES, import_extra_modules
from lil_meta.losses import build_losses
from lil_meta.models import algorithms, backbones  # noqa: F401  (explicit registration)
from lil_meta.models.algorithms.base import GBML
from lil_meta.models.algorithms.chain import PretrainThen
from lil_meta.models.algorithms.head_features import check_network

__all__ = ["build_backbone", "build_algorithm", "fill_component_defaults", "component_arguments", "GBML",
           "PretrainThen"]


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def _with_defaults(spec: dict, defaults: dict) -> dict:
    """``spec`` with each dotted key of ``defaults`` set where it is missing, into the groups the
    named algorithm takes (a config the components were not filled into: a user's component, a
    hand-made config)."""
    accepted = ALGORITHMS.defaults(str(spec.get("name")), SUPPLIED) if str(spec.get("name")) in ALGORITHMS else {}
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in spec.items()}
    for dotted, value in defaults.items():
        group, _, key = dotted.rpartition(".")
        if not group:
            out.setdefault(key, value)
        elif group in accepted and isinstance(out.get(group, {}), dict):
            out.setdefault(group, {}).setdefault(key, value)
    return out


def _probe(cfg: DictConfig, network: torch.nn.Module) -> torch.Tensor:
    """Two images of the config's shape, from a generator of their own (the global stream, which
    the initial weights and tasks follow, is left as it was)."""
    d = cfg.data
    ref = next(network.parameters())
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, d.channels, d.image_size, d.image_size, generator=g).to(ref.device, ref.dtype)


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
    # the multi-step loss anneals over a tenth of training unless its spec says otherwise
    losses = build_losses([_plain(spec) for spec in cfg.losses],
                          defaults={"anneal_iters": max(1, int(cfg.solver.max_iter) // 10)})
    main_spec = _with_defaults(_plain(cfg.algorithm), {"diagnostics.metrics_period": cfg.log.period})
    network = build_backbone(cfg)
    check_network(network, _probe(cfg, network))
    head = network.head.out_features
    if head != cfg.data.way:
        raise ConfigError(f"model.backbone: the network's head has {head} outputs but the tasks are "
                          f"{cfg.data.way}-way (data.way); leave num_classes unset to follow data.way")
    main = ALGORITHMS.build(main_spec, "algorithm", network, losses=losses)
    iters = int(cfg.pretrain.iters)
    if iters <= 0:
        return main
    if iters > int(cfg.solver.max_iter):
        raise ConfigError(f"pretrain.iters: {iters} is more than solver.max_iter={cfg.solver.max_iter}")
    shared = {}
    for dotted in SHARED_WITH_PRETRAIN:
        group, _, key = dotted.rpartition(".")
        source = main_spec.get(group, {}) if group else main_spec
        if isinstance(source, dict) and key in source:
            shared[dotted] = source[key]
    pretrain = ALGORITHMS.build(_with_defaults(_plain(cfg.pretrain.algorithm),
                                               {"diagnostics.metrics_period": cfg.log.period, **shared}),
                                "pretrain.algorithm", network)
    return PretrainThen(pretrain, main, iters)
