"""Checkpoints: safetensors for tensors, JSON for everything else, committed atomically.

A checkpoint is a directory. Its files change together through a small journal: the new files are
written to `.staging/`, then a `COMMIT` marker, then each file is moved into place. A kill before
the marker leaves the previous checkpoint untouched; a kill after it is finished by the next
reader (`recover`). Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

__all__ = ["CONFIG_FILE", "MODEL_FILE", "EMA_FILE", "STATE_FILE", "STATE_JSON", "commit", "recover", "save_tensors", "load_tensors", "load_weights", "write_json_atomic"]

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"          # the averaged weights, where the run keeps them (train.ema_decay > 0)
STATE_FILE = "train_state.safetensors"
STATE_JSON = "train_state.json"
STAGING = ".staging"
COMMIT_MARK = "COMMIT"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, path)


def _roll_forward(folder: Path) -> None:
    staging = folder / STAGING
    for name in json.loads((staging / COMMIT_MARK).read_text())["files"]:
        try:
            os.replace(staging / name, folder / name)
        except FileNotFoundError:  # moved already (a previous, interrupted roll-forward)
            pass
    (staging / COMMIT_MARK).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)


def recover(folder: Path) -> None:
    """Finish a commit that was interrupted after its marker was written (safe to call any time)."""
    if (Path(folder) / STAGING / COMMIT_MARK).is_file():
        _roll_forward(Path(folder))


def commit(folder: Path, writers: dict[str, Callable[[Path], None]]) -> None:
    """Write the files named in `writers` so that they replace the old ones all together or not at all."""
    folder = Path(folder)
    recover(folder)
    staging = folder / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # an unfinished earlier attempt
    staging.mkdir(parents=True)
    for name, write in writers.items():
        write(staging / name)
        _fsync(staging / name)
    write_json_atomic(staging / COMMIT_MARK, {"files": list(writers)})
    _roll_forward(folder)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (is {path.parent} a genloom checkpoint directory?)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def load_weights(module: torch.nn.Module, path: Path, prefix: str = "") -> None:
    """Load `module`'s weights from a safetensors file, naming every missing or misshapen tensor."""
    tensors = load_tensors(path)
    if prefix:
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = module.state_dict()
    problems = [f"missing {k}" for k in expected if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in expected]
    problems += [f"{k}: checkpoint has shape {tuple(tensors[k].shape)}, the model expects {tuple(v.shape)}"
                 for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"{path} does not fit the model described by its config.json: {shown}")
    module.load_state_dict(tensors)


# -- optimizer state <-> (tensors, JSON) -------------------------------------------------------



