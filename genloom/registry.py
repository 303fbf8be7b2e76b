"""Name -> component tables. Each family module registers its config class and builder here.

A recipe's `[model] kind = "transformer"` is resolved through these tables, and only here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError

__all__ = ["Component", "register", "lookup", "kinds", "DEFAULT_KINDS"]

# Sections of a run config that hold a pluggable component (`train` is fixed).
COMPONENT_SECTIONS = ("data", "model", "objective")
DEFAULT_KINDS = {"data": "text", "model": "transformer", "objective": "lm"}

# Modules that register components when imported. New families add a line here.
_FAMILY_MODULES = (
    "genloom.data.text",
    "genloom.data.images",
    "genloom.data.captions",
    "genloom.data.chat",
    "genloom.data.code",
    "genloom.data.music",
    "genloom.data.video",
    "genloom.data.audio",
    "genloom.models.transformer",
    "genloom.models.unet",
    "genloom.models.dit",
    "genloom.models.video",
    "genloom.models.gan",
    "genloom.objectives.lm",
    "genloom.objectives.diffusion",
    "genloom.objectives.video",
    "genloom.objectives.audio",
    "genloom.objectives.gan",
    "genloom.objectives.dpo",
)


@dataclass(frozen=True)
class Component:
    config_class: type
    build: Callable[..., Any]


_TABLES: dict[str, dict[str, Component]] = {section: {} for section in COMPONENT_SECTIONS}
_loaded = False


def register(section: str, kind: str, config_class: type) -> Callable[[Callable], Callable]:
    """Decorator for a builder: `@register("model", "transformer", TransformerConfig)`."""
    if section not in _TABLES:
        raise ValueError(f"unknown section {section!r}")

    def decorate(build: Callable) -> Callable:
        _TABLES[section][kind] = Component(config_class, build)
        return build

    return decorate


def _load_families() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _FAMILY_MODULES:
            importlib.import_module(module)


def kinds(section: str) -> list[str]:
    _load_families()
    return sorted(_TABLES[section])


def lookup(section: str, kind: str) -> Component:
    _load_families()
    table = _TABLES[section]
    if kind not in table:
        raise ConfigError(f"{section}.kind: unknown kind {kind!r}; valid choices: {', '.join(sorted(table))}")
    return table[kind]
