"""genloom's cache folder, and the one helper that trains a small network once and keeps it there.

The cache (`$GENLOOM_CACHE`, else `~/.cache/genloom`) holds what genloom makes once and reuses: rendered
and synthesised data, tokenizers, and the small networks behind its metrics and helpers (feature
classifiers, encoders, vocoders). A network is kept as two files, never a pickle:
`NAME.safetensors` (its weights) and `NAME.json` (the settings it was made with, what is needed to build
it again, and metadata such as its held-out accuracy and training time). `cached_network` loads it when the
JSON holds the settings asked for (a version number among them: bump it when a network or its training
changes) and otherwise trains it once and writes both files together (`io.commit`), so an interrupted run
never leaves weights beside the wrong JSON.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable, TypeVar

from torch import nn

from .errors import GenloomError
from .io import commit, load_weights, recover, save_tensors, write_json_atomic

__all__ = ["default_cache_dir", "cache_folder", "cached_network", "load_network"]

log = logging.getLogger(__name__)

Model = TypeVar("Model", bound=nn.Module)


def default_cache_dir() -> Path:
    return Path(os.environ.get("GENLOOM_CACHE", Path.home() / ".cache" / "genloom"))


def cache_folder(*names: str, cache_dir: str | Path | None = None) -> Path:
    """`<cache>/<names...>`, under `cache_dir` when given, else the default cache; each name must be a plain
    folder name (letters, digits, '.', '_', '-'), so that none reaches outside the cache."""
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise GenloomError(f"a cache key must be a plain folder name (letters, digits, '.', '_', '-'), "
                               f"got {name!r}")
    return Path(cache_dir or default_cache_dir()).joinpath(*names)


def load_network(folder: str | Path, name: str, build: Callable[[dict], Model]) -> Model:
    """The network kept as `folder/NAME.safetensors` + `folder/NAME.json`: `build(saved JSON)` makes it (untrained),
    the weights are loaded into it, and it comes back in eval mode with its parameters frozen (and with
    `holdout_accuracy` where the JSON has one)."""
    folder = Path(folder)
    saved = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    model = build(saved)
    load_weights(model, folder / f"{name}.safetensors")
    if "holdout_accuracy" in saved:
        model.holdout_accuracy = saved["holdout_accuracy"]
    return model.eval().requires_grad_(False)


def cached_network(folder: str | Path, name: str, settings: dict, build: Callable[[dict], Model],
                   train: Callable[[], Model], *, what: str,
                   describe: Callable[[Model], dict] | None = None) -> Model:
    """A small network trained once and kept in `folder` as NAME.safetensors + NAME.json.

    Loaded (`load_network(folder, name, build)`) when the JSON holds every key of `settings` with the same
    value; otherwise `train()` makes it and both files are written together. The JSON holds `describe(model)`
    (what `build` needs to make the network again), `settings`, the network's `holdout_accuracy` where it has
    one, and the training time. `what` names the network in the log."""
    folder = Path(folder)
    recover(folder)
    weights, info = folder / f"{name}.safetensors", folder / f"{name}.json"
    if weights.is_file() and info.is_file():
        saved = json.loads(info.read_text(encoding="utf-8"))
        if all(saved.get(k) == v for k, v in settings.items()):
            return load_network(folder, name, build)
        log.info("%s was made with other settings (%s); training a new %s", info,
                 ", ".join(f"{k}: {saved.get(k)!r}, now {v!r}" for k, v in settings.items() if saved.get(k) != v),
                 what)
    log.info("training the %s once (it is cached in %s)", what, folder)
    start = time.perf_counter()
    model = train()
    seconds = round(time.perf_counter() - start, 1)
    record = {**(describe(model) if describe is not None else {}), **settings, "train_seconds": seconds}
    accuracy = getattr(model, "holdout_accuracy", None)
    if accuracy is not None:
        record["holdout_accuracy"] = accuracy
        log.info("%s: %.1f%% right on held-out examples (%.0f s)", what, 100 * accuracy, seconds)
    else:
        log.info("%s trained in %.0f s", what, seconds)
    folder.mkdir(parents=True, exist_ok=True)
    commit(folder, {weights.name: lambda p: save_tensors(model.state_dict(), p),
                    info.name: lambda p: write_json_atomic(p, record)})
    return model
