"""The config nodes that name a registered component, and what a config learns from the registries.

``model.backbone``, ``algorithm`` and ``pretrain.algorithm`` name a component with ``name``; their
other keys are its keyword arguments. This module knows the components only through the
registries (:mod:`engine.registry`): which arguments some registered component of a kind takes,
and the defaults of the one a node names. It imports no component: the built-in ones register
when their packages are imported (the entry points and :mod:`engine.runner` import them; a
program of its own imports ``lil_meta.models`` and ``lil_meta.datasets``), a user's through
``extra_modules``.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from lil_meta.engine.registry import ALGORITHMS, BACKBONES

__all__ = ["COMPONENT_NODES", "SUPPLIED", "FOLLOWS", "SHARED_WITH_PRETRAIN", "component_arguments",
           "fill_component_defaults"]

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
