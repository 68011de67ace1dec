"""Registries: a config names a component, the rest of its keys become keyword arguments.

One registry per kind (``BACKBONES``, ``ALGORITHMS``, ``LOSSES``, ``DATASETS``). Components
register by explicit import in each package's ``__init__.py``; user code registers through the
config's ``extra_modules`` list (imported by :func:`engine.config.import_extra_modules`).

A registry entry may carry *preset* keyword arguments, so variants are one line each
(timm style)::

    ALGORITHMS.register("fomaml", GBML, first_order=True)
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from engine.errors import ConfigError

__all__ = ["Registry", "BACKBONES", "ALGORITHMS", "LOSSES", "DATASETS"]


def _closest(word: str, choices) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def _arguments(target: Callable[..., Any]) -> tuple[list[str], bool]:
    """The keyword names ``target`` accepts, and whether it accepts any (``**kwargs``).

    A class whose ``__init__`` passes ``**kwargs`` on (``def __init__(self, model, prox=0.1,
    **kwargs)``) accepts its bases' arguments too: they are collected along the MRO up to the
    first ``__init__`` without ``**kwargs``, so a subclass's config is still checked key by key.
    """
    if inspect.isclass(target):
        inits = [vars(c)["__init__"] for c in target.__mro__ if "__init__" in vars(c)]
        chain = [inspect.signature(target)] + [inspect.signature(f) for f in inits[1:]]
    else:
        chain = [inspect.signature(target)]
    names: list[str] = []
    for i, sig in enumerate(chain):
        params = list(sig.parameters.values())[1 if i else 0:]  # bases' __init__: drop self
        names += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names, False
    return names, True


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
