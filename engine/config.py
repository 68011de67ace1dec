"""Config loading: YAML files composed with Hydra's compose API, checked against a schema.

A run's config is ``load_config("configs/maml_5shot.yaml", ["solver.lr=3e-4", ...])``.
Files compose from shared bases through Hydra's ``defaults:`` list (``configs/base.yaml``
pulls in the schema below, so every key has a default and a type). Overrides use Hydra's
grammar: ``key=value`` sets a key, ``+key=value`` adds one the config does not know (e.g. an
argument of a component registered by a user module). A typo or a wrongly typed value is a
:class:`ConfigError` that names the key and suggests the closest valid one.

Component sections (``algorithm``, ``model.backbone``, ``pretrain.algorithm``, ``data.args``)
are open dicts: their keys are checked against the component's constructor when it is built
(see :mod:`engine.registry`). The constructor arguments of the registered backbones and
algorithms are config keys like any other (``model.backbone.hidden=32``,
``algorithm.rates.mode=per_element``): after composing, each of those nodes is filled with
the arguments it does not set, at the values the component is built with anyway
(:func:`engine.components.fill_component_defaults`), so ``config.yaml`` shows every one. The
components are those registered when the config loads: the entry points import the built-in
ones (``lil_meta.models``, ``lil_meta.datasets``); this module imports none.
"""

from __future__ import annotations

import copy
import difflib
import logging
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lil_meta.engine.components import (
    ALGORITHM_SCHEMA,
    COMPONENT_NODES,
    component_arguments,
    deprecation,
    drop_schema_keys_not_taken,
    fill_component_defaults,
    migrate_moved_keys,
    moved_key,
)
from lil_meta.engine.config_values import check_values
from lil_meta.engine.errors import ConfigError
from lil_meta.engine.fileio import atomic_write
from lil_meta.engine.registry import (
    DATASETS,
    import_extra_modules,  # noqa: F401  (part of this module's API)
)

logger = logging.getLogger(__name__)

__all__ = ["load_config", "read_yaml_mapping", "save_config", "import_extra_modules", "Config"]


@dataclass
class DataConfig:
    name: str = "glyphs"
    root: str | None = None
    way: int = 5
    shot: int = 5
    query: int = 15
    image_size: int = 28
    channels: int = 1
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    backbone: dict[str, Any] = field(default_factory=lambda: {"name": "conv4"})


@dataclass
class SolverConfig:
    meta_batch: int = 4
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    min_lr: float = 0.0  # the cosine schedule's floor (MAML++'s cosine annealing), < lr
    warmup_iters: int = 0
    max_iter: int = 300
    checkpoint_period: int = 100
    keep_checkpoints: int = 3
    on_nonfinite: str = "stop"  # a NaN/inf loss or meta-gradient: stop, or skip the batch
    max_skips: int = 10  # skipped batches allowed over the run before stopping anyway
    clip_grad_norm: float = 0.0  # clip the meta-gradient's global norm (0: off)
    # forward+backward this many tasks at a time (same update, less memory); 0: the whole batch;
    # auto: one at a time on the per-task loop, the whole batch under vmap (shrunk if it does not fit)
    task_chunk: Any = "auto"
    # fp32 (IEEE, TF32 off), tf32 (GPU) or bf16 (autocast forward): engine/precision.py
    precision: str = "fp32"
    # the optimizer's fused kernel, which skips a non-finite update on the device, so that no
    # step waits on the host (engine/step_check.py); auto: on CUDA
    fused: Any = "auto"


@dataclass
class TestConfig:
    tasks: int = 600
    val_tasks: int = 100
    batch: int = 25
    eval_period: int = 100
    seed: int = 2024


@dataclass
class LogConfig:
    period: int = 20
    tensorboard: bool = True


@dataclass
class LaunchConfig:
    """Several processes (torchrun, SLURM): how long a collective waits for a process that does
    not answer before every other process stops (docs/cluster.md)."""

    timeout_s: int = 600


@dataclass
class PretrainConfig:
    """A pretraining phase before ``algorithm`` (see :mod:`models.algorithms.chain`): the first
    ``iters`` of ``solver.max_iter`` train with ``algorithm`` here; 0 turns it off."""

    iters: int = 0
    algorithm: dict[str, Any] = field(
        default_factory=lambda: {"name": "lil_pretrain", "momentum": 0.999, "weight": 0.1}
    )


@dataclass
class Config:
    algorithm: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(ALGORITHM_SCHEMA))
    losses: list[Any] = field(default_factory=lambda: [{"name": "cross_entropy"}])
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    log: LogConfig = field(default_factory=LogConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    seed: int = 0
    device: str = "auto"
    output_dir: str | None = None
    extra_modules: list[str] = field(default_factory=list)


ConfigStore.instance().store(name="lil_schema", node=Config)
# Integer division for configs that derive one count from another, e.g. a pretraining phase of
# half the run: ``pretrain.iters: ${floordiv:${solver.max_iter},2}``.
OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b), replace=True)


def _all_keys(node, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            path = f"{prefix}.{k}" if prefix else str(k)
            keys.append(path)
            keys.extend(_all_keys(node._get_node(k), path))
    return keys


def _explain(exc: BaseException, where: str) -> ConfigError:
    """Turn a Hydra/OmegaConf exception into one line naming the key and a suggestion."""
    chain, seen = [], exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    informative = [e for e in chain if str(e).strip() not in ("", "None")] or chain
    cause = next((e for e in chain if isinstance(e, OmegaConfBaseException)), informative[0])
    key = getattr(cause, "full_key", None)
    first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    if key and ("not in" in first or "is not in struct" in first):
        schema = OmegaConf.structured(Config)
        known = _all_keys(schema) + [f"{path}.{arg}" for path, args in _component_arguments().items()
                                     for arg in sorted(args)]
        known = [k for k in known if not key.startswith(f"{k}.")]  # not the section it is in
        hint = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
        hint_text = f"; did you mean '{hint[0]}'?" if hint else ""
        open_section = key.startswith(("algorithm.", "pretrain.algorithm.", "model.backbone.", "data.args."))
        add = (f" (an argument of a component registered by a user module is added with +{key}=...)"
               if open_section else "")
        return ConfigError(f"{where}: unknown config key '{key}'{hint_text}{add}")
    if key:
        return ConfigError(f"{where}: bad value for '{key}': {first}")
    if type(cause).__name__ == "OverrideParseException":
        return ConfigError(f"{where}: cannot parse a key=value override: {first}")
    return ConfigError(f"{where}: {first}")


def _component_arguments() -> dict[str, set[str]]:
    """Each component node's settable keys, from the registries (``models`` registers the
    built-in components, ``datasets`` the datasets)."""
    arguments = {path: component_arguments(path) for path in COMPONENT_NODES}
    arguments["data.args"] = _dataset_arguments()
    return arguments


def _dataset_arguments() -> set[str]:
    """The keys ``data.args`` may set: every argument of a registered dataset (``cache_dir``,
    ``rebuild``, ``verify``, … of docs/datasets.md) but those set as ``data.*`` themselves."""
    return DATASETS.argument_names(("root", "image_size", "channels", "seed"))


def _plain_component_overrides(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with each plain ``node.arg=value`` of a component node whose ``arg`` some
    registered component takes turned into Hydra's ``++node.arg=value`` (set, or add if absent):
    such an argument is a config key even where the composed files do not set it. Anything else
    (a typo, ``+``/``~`` forms, a line Hydra cannot parse) is passed on unchanged."""
    from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: PLC0415
    from hydra.core.override_parser.types import OverrideType  # noqa: PLC0415

    arguments = _component_arguments()
    parser = OverridesParser.create()
    out = []
    for line in overrides:
        try:
            (override,) = parser.parse_overrides([line])
        except (HydraException, ValueError):
            out.append(line)
            continue
        path, _, rest = override.key_or_group.rpartition(".")
        arg = rest
        while path and path not in arguments:  # a nested key: model.backbone.arg.sub
            path, _, head = path.rpartition(".")
            arg = head
        plain = override.type is OverrideType.CHANGE and override.package is None and not override.is_sweep_override()
        moved = moved_key(path, arg) if plain and override.key_or_group == f"{path}.{arg}" else None
        if moved is not None:  # a flat key of earlier versions: set where it lives now
            logger.warning("%s", deprecation(f"{path}.{arg}", moved))
            out.append(f"++{moved}={line.split('=', 1)[1]}")
            continue
        out.append(f"++{line}" if plain and path in arguments and arg in arguments[path] else line)
    return out


def _yaml_loader():
    try:  # the loader OmegaConf and Hydra read config files with: safe, duplicate keys refused
        from omegaconf._utils import get_yaml_loader  # noqa: PLC0415

        return get_yaml_loader()
    except ImportError:
        return yaml.SafeLoader


def _yaml_problem(exc: yaml.YAMLError, path: str | os.PathLike) -> str:
    """One line for a YAML error: the file, line and column, and what is wrong there."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    name = mark.name if mark is not None and not str(mark.name).startswith("<") else str(path)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    tag = re.search(r"constructor for the tag '([^']*)'", problem)
    if tag:
        shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return f"{name}: YAML tag '{shown}'{where} is not allowed; a config is plain data (nothing in it is run)"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        problem += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    elif context:
        problem += f" ({context})"
    return f"{name}: invalid YAML{where}: {problem}"


MAX_CONFIG_NODES = 100_000


def _check_finite_tree(value, path, what: str) -> None:
    """Refuse YAML whose aliases make it infinite (``x: &a [*a]``) or huge once expanded (nested
    aliases double at each level): the config system would recurse forever or exhaust memory."""
    count, stack = 0, [(value, ())]
    while stack:
        node, ancestors = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if id(node) in ancestors:
            raise ConfigError(f"{path}: {what} has a YAML alias that contains itself (an infinite value)")
        count += len(node)
        if count > MAX_CONFIG_NODES:
            raise ConfigError(f"{path}: {what} expands to over {MAX_CONFIG_NODES} values (through its "
                              f"YAML aliases); a config is far smaller")
        inner = (*ancestors, id(node))
        stack.extend((child, inner) for child in (node.values() if isinstance(node, dict) else node))


def read_yaml_mapping(path: str | os.PathLike, what: str = "config file") -> dict:
    """The top-level mapping of the YAML file at ``path``; anything else is one :class:`ConfigError`
    naming the file: not found, a folder, unreadable, not UTF-8, a YAML error (with its line and
    column), a tag (``!!python/...``: refused by the safe loader, never run), empty, or a top level
    that is not a mapping."""
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{path}: is a folder, not a {what}")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise ConfigError(f"{path}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, "
                          f"column {column})") from None
    try:
        value = yaml.load(text, Loader=_yaml_loader())  # noqa: S506  (a safe loader)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(exc, path)) from None
    except RecursionError:
        raise ConfigError(f"{path}: {what} is nested too deeply to be a config") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a tagged value of the wrong form: `!!int x`
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{path}: a value does not fit its YAML tag ({first})") from None
    _check_finite_tree(value, path, what)
    if value is None or value == {}:
        raise ConfigError(f"{path}: {what} is empty; expected a mapping of keys")
    if not isinstance(value, dict):
        kind = "a list" if isinstance(value, list) else f"the value {value!r}"
        raise ConfigError(f"{path}: expected a mapping of keys at the top level of the {what}, got {kind}")
    return value


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the YAML file at ``path`` with its bases and ``key=value`` overrides."""
    read_yaml_mapping(path)  # a bad file is one line naming it, before Hydra reads it
    file = Path(path).expanduser().resolve()
    if file.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"{path}: expected a .yaml config file")
    try:
        with initialize_config_dir(version_base=None, config_dir=str(file.parent)):
            composed = compose(config_name=file.stem, overrides=_plain_component_overrides(overrides))
        cfg = complete_config(composed, warn=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise _explain(exc, str(path)) from None
    except yaml.YAMLError as exc:  # in a file of the defaults list
        raise ConfigError(_yaml_problem(exc, path)) from None
    except (OSError, ValueError) as exc:  # likewise: unreadable, not UTF-8, not a mapping
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{path}: cannot compose the files it includes ({first})") from None
    except RecursionError:  # likewise: an alias that contains itself (``x: &a [*a]``)
        raise ConfigError(f"{path}: cannot compose the files it includes (one of them is infinite or "
                          f"nested too deeply, e.g. a YAML alias that contains itself)") from None
    if cfg.output_dir is None:
        cfg.output_dir = str(Path("output") / file.stem)
    check_values(cfg)
    OmegaConf.set_struct(cfg, True)
    return cfg


def complete_config(data: str | dict | DictConfig, warn: bool = False) -> DictConfig:
    """A composed or saved config (YAML text or a mapping) completed as :func:`load_config`
    completes a file: the flat algorithm keys of earlier versions moved into their groups
    (``warn``: saying so), every component argument it leaves out filled with the value the
    component is built with, on the schema's defaults, interpolations resolved. A checkpoint
    written before a key existed or moved thus compares equal to a run that leaves the key at
    its default (:meth:`engine.checkpoint.Checkpointer.load`)."""
    cfg = OmegaConf.create(data)
    migrate_moved_keys(cfg, warn)
    drop_schema_keys_not_taken(cfg)  # before filling: nothing is to follow a key dropped here
    fill_component_defaults(cfg)
    cfg = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    drop_schema_keys_not_taken(cfg)  # the schema's merge writes them once more
    OmegaConf.resolve(cfg)
    return cfg


def save_config(cfg: DictConfig, output_dir: str | os.PathLike) -> Path:
    """Write the resolved config to ``output_dir/config.yaml`` and make ``cfg`` read-only."""
    out = Path(output_dir) / "config.yaml"
    atomic_write(out, OmegaConf.to_yaml(cfg, resolve=True))
    OmegaConf.set_readonly(cfg, True)
    return out
