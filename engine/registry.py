"""Registries: a config names a component, the rest of its keys become keyword arguments.

One registry per kind (``BACKBONES``, ``ALGORITHMS``, ``LOSSES``, ``DATASETS``). Components
register by explicit import in each package's ``__init__.py``; user code registers through the
config's ``extra_modules`` list (imported by :func:`import_extra_modules`).

A registry entry may carry *preset* keyword arguments, so variants are one line each
(timm style)::

    ALGORITHMS.register("fomaml", GBML, first_order=True)
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lil_meta.engine.errors import ConfigError

__all__ = ["Registry", "BACKBONES", "ALGORITHMS", "LOSSES", "DATASETS", "import_extra_modules"]

logger = logging.getLogger(__name__)


def _closest(word: str, choices) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def _parameters(target: Callable[..., Any]) -> tuple[list[inspect.Parameter], bool]:
    """The keyword parameters ``target`` accepts, and whether it accepts any (``**kwargs``).

    A class whose ``__init__`` passes ``**kwargs`` on (``def __init__(self, model, prox=0.1,
    **kwargs)``) accepts its bases' arguments too: they are collected along the MRO up to the
    first ``__init__`` without ``**kwargs``, so a subclass's config is still checked key by key.
    """
    if inspect.isclass(target):
        inits = [vars(c)["__init__"] for c in target.__mro__ if "__init__" in vars(c)]
        chain = [inspect.signature(target)] + [inspect.signature(f) for f in inits[1:]]
    else:
        chain = [inspect.signature(target)]
    found: dict[str, inspect.Parameter] = {}
    for i, sig in enumerate(chain):
        params = list(sig.parameters.values())[1 if i else 0:]  # bases' __init__: drop self
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in found:
                found[p.name] = p
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return list(found.values()), False
    return list(found.values()), True


def _arguments(target: Callable[..., Any]) -> tuple[list[str], bool]:
    """The keyword names ``target`` accepts, and whether it accepts any (``**kwargs``)."""
    params, open_kwargs = _parameters(target)
    return [p.name for p in params], open_kwargs


def _groups(target: Callable[..., Any]) -> dict[str, type]:
    """The arguments of ``target`` annotated with a frozen settings dataclass (a group of config
    keys, e.g. ``execution: Execution | dict | None``), by name."""
    inits = [vars(c)["__init__"] for c in target.__mro__ if "__init__" in vars(c)] if inspect.isclass(target) \
        else [target]
    found: dict[str, type] = {}
    for init in inits:  # a subclass passing **kwargs on takes its bases' groups too
        try:
            hints = inspect.get_annotations(init, eval_str=True)
        except Exception:  # noqa: BLE001  (an annotation this module cannot evaluate: no groups seen there)
            continue
        for name, hint in hints.items():
            for kind in getattr(hint, "__args__", (hint,)):
                if dataclasses.is_dataclass(kind) and isinstance(kind, type):
                    found.setdefault(name, kind)
    return found


def _plain_value(value: Any) -> bool:
    """Whether a default can be written into a config (and read back as the same value)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return True
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_value(v) for k, v in value.items())
    return False


class Registry:
    """A name → (constructor, preset kwargs) table for one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}

    def register(self, name: str | None = None, obj: Callable[..., Any] | None = None, **presets):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(target: Callable[..., Any]) -> Callable[..., Any]:
            key = name or target.__name__.lower()
            if key in self._entries and self._entries[key][0] is not target:
                raise ValueError(f"{self.kind} '{key}' is already registered")
            self._entries[key] = (target, dict(presets))
            return target

        return add if obj is None else add(obj)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str, path: str = "") -> tuple[Callable[..., Any], dict[str, Any]]:
        if name not in self._entries:
            where = f"{path}.name" if path else "name"
            raise ConfigError(
                f"{where}: unknown {self.kind} '{name}'{_closest(name, self._entries)} "
                f"(registered: {', '.join(self.names()) or 'none'})"
            )
        return self._entries[name]

    def defaults(self, name: str, supplied=()) -> dict[str, Any]:
        """The keyword arguments component ``name`` is built with when its config sets none:
        the constructor's defaults, then the entry's presets over them. ``supplied`` (arguments
        the framework passes itself, e.g. the network) and values a config cannot hold are left
        out; tuples become lists."""
        target, presets = self.get(name)
        params, _ = _parameters(target)
        found = {p.name: p.default for p in params
                 if p.default is not inspect.Parameter.empty and p.name not in supplied}
        found.update({k: v for k, v in presets.items() if k not in supplied})
        groups = _groups(target)
        for key, kind in groups.items():  # a group argument whose default is None: its class's defaults
            if found.get(key) is None and key in found:
                found[key] = kind()

        def plain(value):
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                return plain(dataclasses.asdict(value))
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value

        return {k: plain(v) for k, v in found.items() if _plain_value(v)}

    def argument_names_of(self, name: str) -> set[str] | None:
        """The keyword arguments component ``name`` takes (``None``: any, it takes ``**kwargs``
        through to a constructor that does)."""
        target, presets = self.get(name)
        names, open_kwargs = _arguments(target)
        return None if open_kwargs else set(names) | set(presets)

    def argument_names(self, supplied=()) -> set[str]:
        """Every keyword argument some registered component of this kind takes, less ``supplied``."""
        names: set[str] = set()
        for target, presets in self._entries.values():
            names.update(_arguments(target)[0], presets)
        return names - set(supplied)

    def build(self, cfg: Mapping[str, Any], path: str, *args, defaults=None, **fixed):
        """Build the component named by ``cfg["name"]`` with the other keys as kwargs.

        ``args``/``fixed`` are supplied by the framework (e.g. the network), ``defaults`` are
        filled in only when the constructor accepts them and the config does not set them.
        Unknown keys fail naming ``path.key`` and listing the accepted arguments.
        """
        if "name" not in cfg or not cfg["name"]:
            raise ConfigError(f"{path}.name: missing; choose one of: {', '.join(self.names())}")
        kwargs = {k: v for k, v in cfg.items() if k != "name"}
        target, presets = self.get(str(cfg["name"]), path)
        accepted, open_kwargs = _arguments(target)
        settable = [n for n in accepted[len(args):] if n not in fixed]
        for key in kwargs:
            if not open_kwargs and key not in settable:
                raise ConfigError(
                    f"{path}.{key}: unknown argument for {self.kind} '{cfg['name']}'"
                    f"{_closest(key, settable)} (accepted: {', '.join(settable)})"
                )
        merged = {**presets, **kwargs, **fixed}
        for key, value in (defaults or {}).items():
            if key not in merged and (open_kwargs or key in accepted):
                merged[key] = value
        try:
            inspect.signature(target).bind(*args, **merged)
        except TypeError as exc:
            raise ConfigError(f"{path}: cannot build {self.kind} '{cfg['name']}': {exc}") from None
        return target(*args, **merged)


BACKBONES = Registry("backbone")
ALGORITHMS = Registry("algorithm")
LOSSES = Registry("loss")
DATASETS = Registry("dataset")


def import_extra_modules(cfg) -> None:
    """Import the user modules listed in ``extra_modules`` so their components register."""
    modules = cfg.get("extra_modules") or []
    if isinstance(modules, (str, bytes)) or not isinstance(modules, Sequence):
        raise ConfigError(f"extra_modules: expected a list of module names, got {modules!r}")
    for name in modules:
        try:
            importlib.import_module(str(name))
        except ImportError as exc:
            raise ConfigError(f"extra_modules: cannot import '{name}': {exc}") from None
        logger.info("imported extra module %s", name)
