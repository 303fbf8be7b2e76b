"""The one place genloom dispatches by kind: components (name -> config class + builder) and content types.

Two tables live here:

- **Components.** A recipe's `[model] kind = "transformer"` names a builder that an engine or content
  package registered with `@register("model", "transformer", TransformerConfig)`. The modules that
  register components are imported on first lookup: the engines' in `ENGINE_MODULES`, each content
  package's through its `Modality.components`.
- **Content types.** Each content package (`genloom/<name>/`) registers one `Modality` record in its
  `__init__.py`: the data kinds its checkpoints are trained on, how to open such a checkpoint as its
  handle, the asset files a checkpoint carries, how `genloom eval` scores it, its CLI commands and how
  the server serves it. `genloom.load`, the CLI, fine-tuning and the server dispatch only through it.

`PACKAGES` lists the content packages and, for each, the other content packages it may import (the
declared edges; `tests/core/test_architecture.py` enforces them). Adding a content type is one new folder
plus one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from .errors import CheckpointError, ConfigError

__all__ = ["Component", "register", "lookup", "kinds", "DEFAULT_KINDS", "Modality", "register_modality",
           "modalities", "modality", "modality_for_data", "modality_of", "recipe_folders", "resolve", "PACKAGES",
           "ENGINE_MODULES"]

# Content packages, each with the content packages it may import (the only edges between them).
PACKAGES: dict[str, tuple[str, ...]] = {
    "text": (),
    "code": ("text",),
    "music": (),
    "images": (),
    "text_to_image": ("images",),
    "video": ("images",),
    "audio": (),
}

# Engine modules that register components of their own (models and objectives any content type may use).
ENGINE_MODULES = (
    "genloom.lm.transformer",
    "genloom.lm.objective",
    "genloom.lm.dpo",
    "genloom.diffusion.unet",
    "genloom.diffusion.dit",
    "genloom.diffusion.objective",
    "genloom.diffusion.autoencoder",
    "genloom.diffusion.flow",
    "genloom.gan.model",
    "genloom.gan.objective",
)

# Sections of a run config that hold a pluggable component (`train` is fixed).
COMPONENT_SECTIONS = ("data", "model", "objective")
DEFAULT_KINDS = {"data": "text", "model": "transformer", "objective": "lm"}


@dataclass(frozen=True)
class Component:
    config_class: type
    build: Callable[..., Any]


@dataclass(frozen=True)
class Modality:
    """What genloom needs to know about one content type. Callables are named "module:attribute" strings,
    imported when first used, so that registering a content type costs nothing at start-up.

    - `data_kinds`: the `data.kind`s whose checkpoints this content type opens (a checkpoint belongs to
      the content type of the data it was trained or fine-tuned on).
    - `components`: modules that register this content type's data, model and objective kinds.
    - `open`: `open(checkpoint: OpenedCheckpoint) -> handle` (see `genloom.api`).
    - `assets`: files beside the weights that a checkpoint of this kind carries (tokenizers, labels,
      trained helper networks); fine-tuning and `genloom merge` copy them.
    - `finetune_assets`: `(base_dir, data_config, finetune_config) -> dict` of keyword arguments for
      the data builder, so new data is read the way the base model reads it (its tokenizer).
    - `evaluate`: `(handle, request: EvalRequest) -> result` behind `genloom eval`.
    - `cli`: the module whose `register(app)` adds this content type's `genloom generate ...` commands.
    - `serve`: which routes of `genloom serve` take its models ("text" or "images"; "" = not served).
    - `adapters`: whether LoRA adapters can be loaded on its models.
    """

    name: str
    title: str
    data_kinds: tuple[str, ...]
    components: tuple[str, ...]
    open: str
    evaluate: str = ""
    assets: tuple[str, ...] = ()
    finetune_assets: str = ""
    cli: str = ""
    serve: str = ""
    adapters: bool = False
    handles: tuple[str, ...] = ()      # "module:Class" of the handles `genloom` exports at the top level
    summary: str = ""                  # one line for docs and `genloom recipes`
    evaluation: str = ""               # what `genloom eval` reports for it (its paragraph of `genloom eval --help`)
    extra: dict[str, Any] = field(default_factory=dict)


_TABLES: dict[str, dict[str, Component]] = {section: {} for section in COMPONENT_SECTIONS}
_MODALITIES: dict[str, Modality] = {}
_packages_loaded = False
_components_loaded = False


def register(section: str, kind: str, config_class: type) -> Callable[[Callable], Callable]:
    """Decorator for a builder: `@register("model", "transformer", TransformerConfig)`."""
    if section not in _TABLES:
        raise ValueError(f"unknown section {section!r}")

    def decorate(build: Callable) -> Callable:
        _TABLES[section][kind] = Component(config_class, build)
        return build

    return decorate


def register_modality(record: Modality) -> Modality:
    """Called once by each content package's `__init__.py`."""
    if record.name not in PACKAGES:
        raise ValueError(f"content package {record.name!r} is not listed in genloom.core.registry.PACKAGES")
    _MODALITIES[record.name] = record
    return record


def _load_packages() -> None:
    """Import each content package's `__init__.py` (it registers its Modality; cheap: no torch)."""
    global _packages_loaded
    if not _packages_loaded:
        _packages_loaded = True
        for name in PACKAGES:
            importlib.import_module(f"genloom.{name}")


def _load_components() -> None:
    """Import every module that registers components (engines first, then each content type's)."""
    global _components_loaded
    if not _components_loaded:
        _components_loaded = True
        _load_packages()
        for module in ENGINE_MODULES + tuple(m for record in _MODALITIES.values() for m in record.components):
            importlib.import_module(module)


def resolve(reference: str) -> Any:
    """The object a "module:attribute" reference names."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def kinds(section: str) -> list[str]:
    _load_components()
    return sorted(_TABLES[section])


def lookup(section: str, kind: str) -> Component:
    _load_components()
    table = _TABLES[section]
    if kind not in table:
        raise ConfigError(f"{section}.kind: unknown kind {kind!r}; valid choices: {', '.join(sorted(table))}")
    return table[kind]


def modalities() -> list[Modality]:
    _load_packages()
    return list(_MODALITIES.values())


def modality(name: str) -> Modality:
    _load_packages()
    return _MODALITIES[name]


def modality_for_data(kind: str, where: str = "") -> Modality:
    """The content type whose checkpoints are trained on `data.kind = kind`."""
    for record in modalities():
        if kind in record.data_kinds:
            return record
    known = sorted(k for record in modalities() for k in record.data_kinds)
    raise CheckpointError(f"{where or 'this checkpoint'}: data.kind {kind!r} belongs to no content type genloom "
                          f"knows ({', '.join(known)})")


def modality_of(handle: Any) -> Modality:
    """The content type of a handle returned by `genloom.load`."""
    return modality_for_data(handle.config.data.kind, str(getattr(handle, "path", "")))


def recipe_folders() -> list[Path]:
    """Every content package's `recipes/` folder, in package order (read without importing the packages)."""
    folders = []
    for name in PACKAGES:
        folder = resources.files(f"genloom.{name}") / "recipes"
        if folder.is_dir():
            folders.append(Path(str(folder)))
    return folders
