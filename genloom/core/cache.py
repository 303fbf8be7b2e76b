"""TODO docstring."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from .io import commit, load_weights, recover, save_tensors, write_json_atomic

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("GENLOOM_CACHE", Path.home() / ".cache" / "genloom"))


def cached_classifier(name: str, version: int, build, train, cache_dir: str | Path | None = None,
                      progress: bool = True):
    """A small evaluation network stored under `<cache>/<name>/` (weights and info.json with its held-out
    accuracy): loaded when its `version` is there, else made by `train(progress=...)` once and saved."""
    folder = (Path(cache_dir) if cache_dir else default_cache_dir()) / name
    recover(folder)
    weights, info_file = folder / "model.safetensors", folder / "info.json"
    if weights.is_file() and info_file.is_file():
        info = json.loads(info_file.read_text(encoding="utf-8"))
        if info.get("version") == version:
            model = build()
            load_weights(model, weights)
            model.eval().requires_grad_(False)
            model.holdout_accuracy = info["holdout_accuracy"]
            return model
    log.info("training the %s once (it is cached in %s)", name.replace("-", " "), folder)
    start = time.perf_counter()
    model = train(progress=progress)
    log.info("%s: %.1f%% right on held-out rendered pictures (%.0f s)", name, 100 * model.holdout_accuracy,
             time.perf_counter() - start)
    info = {"version": version, "holdout_accuracy": model.holdout_accuracy,
            "train_seconds": round(time.perf_counter() - start, 1)}
    folder.mkdir(parents=True, exist_ok=True)
    commit(folder, {"model.safetensors": lambda p: save_tensors(model.state_dict(), p),
                    "info.json": lambda p: write_json_atomic(p, info)})
    return model


def cached_network(folder: Path, name: str, settings: dict, load, train, what: str):
    """A small network trained once per data set and kept beside its clips in `folder` as NAME.safetensors +
    NAME.json: loaded (by `load(folder, name)`) when the JSON holds `settings`, else made by `train()` and
    saved. The network has `settings()`; `what` names it in the log."""
    recover(folder)
    if (folder / f"{name}.safetensors").is_file() and (folder / f"{name}.json").is_file():
        saved = json.loads((folder / f"{name}.json").read_text())
        if all(saved.get(k) == v for k, v in settings.items()):
            return load(folder, name)
    log.info("training the %s (once; cached in %s)", what, folder)
    start = time.perf_counter()
    model = train()
    log.info("%s trained in %.0f s", what, time.perf_counter() - start)
    folder.mkdir(parents=True, exist_ok=True)
    commit(folder, {f"{name}.safetensors": lambda p: save_tensors(model.state_dict(), p),
                    f"{name}.json": lambda p: write_json_atomic(p, model.settings())})
    return model
