"""Networks and meta-learning algorithms, built from a config.

>>> algo = build_algorithm(cfg)   # nn.Module holding θ⁰; algo.model is the network
"""

from __future__ import annotations

if __name__ != "lil_meta.models":  # one import identity (docs/design.md §2)
    raise ImportError(f"{__name__!r} is the folder of lil_meta.models: import it as lil_meta.models")

from omegaconf import DictConfig, OmegaConf, open_dict

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


# The config nodes that name a registered component; their other keys are its keyword arguments.
COMPONENT_NODES = {"model.backbone": BACKBONES, "algorithm": ALGORITHMS, "pretrain.algorithm": ALGORITHMS}
# Arguments the framework passes itself (the network, the built loss terms), never config keys.
SUPPLIED = ("model", "losses")
# Arguments whose default is another key of the config, not the constructor's default.
FOLLOWS = {
    "model.backbone": {"num_classes": "data.way", "in_channels": "data.channels", "image_size": "data.image_size"},
    "algorithm": {"metrics_period": "log.period"},
    "pretrain.algorithm": {"metrics_period": "log.period"},
}
# Inner-loop settings a pretraining phase takes from the main algorithm unless it sets them.
SHARED_WITH_PRETRAIN = ("inner_lr", "inner_steps", "inner_steps_test", "engine", "adapt", "inner_lr_mode",
                        "channels_last", "checkpoint_inner_steps")


def component_arguments(path: str) -> set[str]:
    """The keys a component node (``model.backbone``, ``algorithm``, ``pretrain.algorithm``) may
    set: every argument of some registered component of its kind, and ``name``."""
    return COMPONENT_NODES[path].argument_names(SUPPLIED) | {"name"}


def fill_component_defaults(cfg: DictConfig) -> None:
    """Write into each component node the arguments it does not set, with the values the
    component would be built with anyway, so that every argument is a plain ``key=value`` key and
    ``config.yaml`` shows them all: the entry's preset, else the config key it follows
    (:data:`FOLLOWS`; for ``pretrain.algorithm``, the main algorithm's setting of an inner-loop key
    it sets, :data:`SHARED_WITH_PRETRAIN`), else the constructor's default. Written as
    interpolations where they follow another key, so they resolve after the overrides. Nodes
    naming a component not registered (yet: a user module in ``extra_modules``) are left as they are.
    """
    main = OmegaConf.select(cfg, "algorithm")
    main_sets = set(main.keys()) if isinstance(main, DictConfig) else set()  # before filling it
    for path, registry in COMPONENT_NODES.items():
        node = OmegaConf.select(cfg, path)
        if not isinstance(node, DictConfig) or str(node.get("name")) not in registry:
            continue
        name = str(node.name)
        presets = registry.get(name)[1]
        values = registry.defaults(name, SUPPLIED)
        follows = dict(FOLLOWS.get(path, {}))
        if path == "pretrain.algorithm":
            follows.update({k: f"algorithm.{k}" for k in SHARED_WITH_PRETRAIN if k in main_sets})
        for key, source in follows.items():
            if key in values and key not in presets:
                values[key] = "${" + source + "}"
        with open_dict(node):
            for key, value in values.items():
                if key not in node:
                    node[key] = value


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
