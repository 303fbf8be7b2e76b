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
    "genloom.text.data",
    "genloom.images.data",
    "genloom.text_to_image.data",
    "genloom.text.chat",
    "genloom.code.data",
    "genloom.music.data",
    "genloom.video.data",
    "genloom.audio.data",
    "genloom.lm.transformer",
    "genloom.diffusion.unet",
    "genloom.diffusion.dit",
    "genloom.video.model",
    "genloom.gan.model",
    "genloom.lm.objective",
    "genloom.diffusion.objective",
    "genloom.video.objective",
    "genloom.audio.objective",
    "genloom.gan.objective",
    "genloom.lm.dpo",
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
