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

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lil_meta.engine.registry import ALGORITHMS, BACKBONES

__all__ = ["COMPONENT_NODES", "SUPPLIED", "FOLLOWS", "SHARED_WITH_PRETRAIN", "MOVED_KEYS", "component_arguments",
           "fill_component_defaults", "moved_key", "migrate_moved_keys"]

logger = logging.getLogger(__name__)

# The config nodes that name a registered component; their other keys are its keyword arguments.
COMPONENT_NODES = {"model.backbone": BACKBONES, "algorithm": ALGORITHMS, "pretrain.algorithm": ALGORITHMS}
# Arguments the framework passes itself (the network, the built loss terms), never config keys.
SUPPLIED = ("model", "losses")
# Arguments whose default is another key of the config, not the constructor's default (dotted:
# a key of a group).
FOLLOWS = {
    "model.backbone": {"num_classes": "data.way", "in_channels": "data.channels", "image_size": "data.image_size",
                       "bn_steps": "algorithm.inner_steps"},
    "algorithm": {"diagnostics.metrics_period": "log.period"},
    "pretrain.algorithm": {"diagnostics.metrics_period": "log.period"},
}
# Inner-loop settings a pretraining phase takes from the main algorithm unless it sets them.
SHARED_WITH_PRETRAIN = ("inner_lr", "inner_steps", "inner_steps_test", "adapt", "rates.mode", "execution.engine",
                        "execution.channels_last", "execution.checkpoint_inner_steps")
# The flat keys of an algorithm node in earlier versions, and where they live now: still read,
# with a warning naming the new key.
MOVED_KEYS = {
    "engine": "execution.engine", "channels_last": "execution.channels_last",
    "checkpoint_inner_steps": "execution.checkpoint_inner_steps",
    "precompute_features": "execution.precompute_features",
    "metrics_period": "diagnostics.metrics_period", "hessian_ratio": "diagnostics.hessian_ratio",
    "linearized_metrics": "diagnostics.linearized_metrics",
    "inner_lr_mode": "rates.mode", "learn_inner_lr": "rates.learn", "per_step_inner_lr": "rates.per_step",
}
ALGORITHM_NODES = ("algorithm", "pretrain.algorithm")
# What the schema writes into every algorithm node (engine/config.py); a component that takes
# none of a key drops it where it still holds this value (e.g. ProtoNet has no inner loop).
ALGORITHM_SCHEMA = {"name": "maml", "inner_lr": 0.5, "inner_steps": 3, "inner_steps_test": 3,
                    "execution": {"engine": "auto", "channels_last": "auto", "checkpoint_inner_steps": False}}


def component_arguments(path: str) -> set[str]:
    """The keys a component node (``model.backbone``, ``algorithm``, ``pretrain.algorithm``) may
    set: every argument of some registered component of its kind, and ``name``."""
    return COMPONENT_NODES[path].argument_names(SUPPLIED) | {"name"}


def moved_key(path: str, key: str) -> str | None:
    """Where ``path.key`` lives now when it is a flat key of earlier versions (``algorithm.engine``
    → ``algorithm.execution.engine``), else ``None``."""
    return f"{path}.{MOVED_KEYS[key]}" if path in ALGORITHM_NODES and key in MOVED_KEYS else None


def deprecation(old: str, new: str) -> str:
    return f"config key {old} is deprecated; it was read as {new}, its name from now on"


def migrate_moved_keys(cfg: DictConfig, warn: bool = True) -> None:
    """Move the flat keys of earlier versions (:data:`MOVED_KEYS`) of the algorithm nodes into
    their groups, a warning naming each new key (``warn``; a checkpoint's saved config moves
    silently). A flat key wins over its group's value: it was written by hand."""
    for path in ALGORITHM_NODES:
        node = OmegaConf.select(cfg, path)
        if not isinstance(node, DictConfig):
            continue
        raw = OmegaConf.to_container(node, resolve=False)
        for old, new in MOVED_KEYS.items():
            if old not in raw:
                continue
            with open_dict(node):
                del node[old]
                OmegaConf.update(node, new, raw[old], force_add=True, merge=True)
            if warn:
                logger.warning("%s", deprecation(f"{path}.{old}", f"{path}.{new}"))


def drop_schema_keys_not_taken(cfg: DictConfig) -> None:
    """In each algorithm node naming a registered component, remove the keys the schema put
    there that the component does not take, where they still hold the schema's value (an
    algorithm without an inner loop has no ``inner_lr``)."""
    for path in ALGORITHM_NODES:
        node = OmegaConf.select(cfg, path)
        if not isinstance(node, DictConfig) or str(node.get("name")) not in ALGORITHMS:
            continue
        taken = ALGORITHMS.argument_names_of(str(node.name))
        if taken is None:
            continue
        with open_dict(node):
            for key, default in ALGORITHM_SCHEMA.items():
                if key != "name" and key in node and key not in taken:
                    value = OmegaConf.to_container(node[key]) if isinstance(node[key], DictConfig) else node[key]
                    if value == default:
                        del node[key]


def _flat_keys(node: Any, prefix: str = "") -> set[str]:
    keys = set()
    if isinstance(node, DictConfig):
        for key in node.keys():
            keys.add(f"{prefix}{key}")
            keys |= _flat_keys(node._get_node(key), f"{prefix}{key}.")
    return keys


def _fill(node: DictConfig, values: dict[str, Any]) -> None:
    """Set every key of ``values`` that ``node`` lacks, into its groups too."""
    for key, value in values.items():
        if key not in node:
            node[key] = value
        elif isinstance(value, dict) and isinstance(node._get_node(key), DictConfig):
            with open_dict(node[key]):
                _fill(node[key], value)


def _followable(cfg: DictConfig, source: str) -> bool:
    """Whether a key may follow ``source``: not where ``source`` is an algorithm argument that the
    algorithm the config names does not take (ProtoNet has no ``inner_steps`` to follow)."""
    path, _, key = source.rpartition(".")
    name = OmegaConf.select(cfg, f"{path}.name") if path in ALGORITHM_NODES else None
    taken = ALGORITHMS.argument_names_of(str(name)) if name is not None and str(name) in ALGORITHMS else None
    return taken is None or key in taken


def fill_component_defaults(cfg: DictConfig) -> None:
    """Write into each component node the arguments it does not set, with the values the
    component would be built with anyway, so that every argument is a plain ``key=value`` key and
    ``config.yaml`` shows them all: the entry's preset, else the config key it follows
    (:data:`FOLLOWS`; for ``pretrain.algorithm``, the main algorithm's setting of an inner-loop key
    it sets, :data:`SHARED_WITH_PRETRAIN`), else the constructor's default; a group's keys one by
    one. Written as interpolations where they follow another key, so they resolve after the
    overrides. Nodes naming a component not registered (yet: a user module in
    ``extra_modules``) are left as they are.
    """
    main_sets = _flat_keys(OmegaConf.select(cfg, "algorithm"))  # before filling it
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
            if not _followable(cfg, source):
                continue
            group, _, inner = key.rpartition(".")
            target = values.get(group) if group else values
            if isinstance(target, dict) and inner in target and key.split(".")[0] not in presets:
                target[inner] = "${" + source + "}"
        with open_dict(node):
            _fill(node, values)
