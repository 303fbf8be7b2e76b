"""A training checkpoint written by every rank together, and read back on any number of ranks. No pickle.

Layout of a checkpoint folder (all committed by one journal, `core.io`, the marker written last, after every
rank has written and fsynced its part):

* `model.safetensors` (and `ema.safetensors`): always whole ("consolidated"), so `genloom.load`, `generate`,
  `serve` and `convert export` read a sharded run like any other. Under FSDP each tensor is gathered in
  turn (all ranks take part) and streamed into the file by rank 0: one tensor at a time is whole in memory.
* The optimizer state: `train_state.safetensors` (whole, one process or DDP), or under FSDP one
  `train_state-RRRRR-of-NNNNN.safetensors` per rank holding that rank's rows of each state tensor; the
  safetensors metadata `genloom.layout` (JSON) gives every tensor's global shape and first row. A reader on
  any number of ranks takes, for each tensor, the rows its own shard needs from whichever files hold them.
* `train_state.json`: step, tokens, elapsed time, the optimizers' settings, the data generator's and every
  rank's random state (base64 of the generator's bytes), and the names of the state files.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import io as ckpt
from ..core.errors import CheckpointError
from .parallel import full_tensor, is_sharded, local_rows, row_range, rows_as_shard

__all__ = ["shard_name", "write_state_shard", "StateReader", "write_gathered", "gather_in_step",
           "load_weights_sharded", "encode_rng", "decode_rng", "stale_state_files"]

LAYOUT_KEY = "genloom.layout"
SHARD_FORMAT = "genloom-state-shard-1"


def shard_name(rank: int, world: int) -> str:
    return f"train_state-{rank:05d}-of-{world:05d}.safetensors"


def encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def write_state_shard(tensors: dict[str, torch.Tensor], path: Path, is_main: bool) -> None:
    """This rank's part of `tensors`: its rows of each sharded tensor; the whole tensors (the same on every
    rank) from the main rank only. The layout goes into the file's metadata as JSON."""
    own: dict[str, torch.Tensor] = {}
    layout: dict[str, list] = {}
    for key, value in tensors.items():
        if is_sharded(value):
            local, begin = local_rows(value)
            own[key], layout[key] = local, [list(value.shape), begin]
        elif is_main:
            own[key], layout[key] = value, [list(value.shape), 0]
    ckpt.save_tensors(own, path, {"format": SHARD_FORMAT, LAYOUT_KEY: json.dumps(layout, separators=(",", ":"))})


class StateReader:
    """The tensors of a checkpoint's state files (whole or sharded), read piece by piece."""

    def __init__(self, folder: Path, names: list[str]):
        self.files: list[ckpt.TensorFile] = []
        self.pieces: dict[str, list[tuple[ckpt.TensorFile, int, tuple[int, ...]]]] = {}
        try:
            for name in names:
                path = Path(folder) / name
                if ckpt.journal_name_problem(name) or not path.is_file():
                    raise CheckpointError(f"--resume: {path} is missing (train_state.json lists it as part of "
                                          "the optimizer state)")
                if ckpt.recorded_sha256(path):          # the integrity check load_tensors makes
                    self._verify(path)
                file = ckpt.TensorFile(path)
                self.files.append(file)
                layout = json.loads(file.metadata.get(LAYOUT_KEY, "null") or "null")
                for key in file.names():
                    shape, begin = (layout[key][0], layout[key][1]) if layout else (list(file.shape(key)), 0)
                    self.pieces.setdefault(key, []).append((file, begin, tuple(shape)))
        except (ValueError, KeyError, TypeError, IndexError) as error:
            self.close()
            raise CheckpointError(f"--resume: the state files in {folder} have no readable layout "
                                  f"({type(error).__name__})") from None
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _verify(path: Path) -> None:
        expected, actual = ckpt.recorded_sha256(path), ckpt.sha256_file(path)
        if expected != actual:
            raise CheckpointError(f"{path} is damaged: its SHA-256 is not the one recorded when it was written")

    def __enter__(self) -> "StateReader":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        for file in self.files:
            file.close()

    def keys(self) -> list[str]:
        return list(self.pieces)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.pieces[key][0][2]

    def rows(self, key: str, begin: int, end: int) -> torch.Tensor:
        """Rows [begin, end) of tensor `key` (a 0-d tensor: the whole of it)."""
        pieces = self.pieces[key]
        shape = pieces[0][2]
        if not shape:
            return pieces[0][0].load(key)
        parts = []
        for file, first, _ in sorted(pieces, key=lambda piece: piece[1]):
            count = file.shape(key)[0]
            a, b = max(begin, first), min(end, first + count)
            if a < b:
                parts.append(file.load(key)[a - first:b - first])
        found = sum(p.shape[0] for p in parts)
        if found != end - begin:
            raise CheckpointError(f"--resume: the state files hold {found} of rows {begin}..{end} of {key}")
        return torch.cat(parts) if parts else torch.empty((0, *shape[1:]), dtype=pieces[0][0].dtype(key))

    def read(self, key: str, like: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor `key`: whole, or, where `like` is sharded, this rank's rows of it as a DTensor shaped like `like`."""
        shape = self.shape(key)
        if like is not None and is_sharded(like):
            if tuple(like.shape) != shape:
                raise CheckpointError(f"--resume: {key} has shape {shape} in the checkpoint, {tuple(like.shape)} here")
            rank, world = like.device_mesh.get_local_rank(), like.device_mesh.size()
            begin, end = row_range(shape[0], world, rank)
            return rows_as_shard(self.rows(key, begin, end), like)
        return self.rows(key, 0, shape[0] if shape else 0)


class _Gathered:
    """A tensor that `save_tensors_streamed` writes: gathered whole when its turn comes."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor, self.shape, self.dtype = tensor, tuple(tensor.shape), tensor.dtype

    def load(self) -> torch.Tensor:
        return full_tensor(self.tensor.detach()).cpu()


def write_gathered(tensors: dict[str, torch.Tensor], path: Path | None, metadata: dict[str, str]) -> None:
    """A whole safetensors file of possibly sharded `tensors`: every rank calls this (the gathers are
    collectives, in sorted name order); the rank given a `path` writes it, one tensor in memory at a time."""
    sharded = any(is_sharded(v) for v in tensors.values())
    if path is not None:
        if sharded:
            ckpt.save_tensors_streamed({k: _Gathered(v) for k, v in tensors.items()}, path, metadata)
        else:                               # whole already (one process, DDP): written as always
            ckpt.save_tensors(tensors, path, metadata)
        ckpt.fsync(path)
    elif sharded:
        gather_in_step(tensors)


def gather_in_step(tensors: dict[str, torch.Tensor]) -> None:
    """Take part in `write_gathered`'s gathers without keeping anything (the ranks that do not write)."""
    for key in sorted(tensors):
        full_tensor(tensors[key].detach())


def load_weights_sharded(module: nn.Module, path: Path) -> None:
    """`core.io.load_weights` for a module whose parameters may be sharded: the same checks, then each rank
    copies only its own rows of each tensor."""
    path = Path(path)
    if ckpt.recorded_sha256(path):
        StateReader._verify(path)
    with ckpt.TensorFile(path) as file:
        expected = module.state_dict(keep_vars=True)
        names = set(file.names())
        problems = [f"missing {k}" for k in expected if k not in names]
        problems += [f"unexpected {k}" for k in names if k not in expected]
        problems += [f"{k}: checkpoint has shape {file.shape(k)}, the model expects {tuple(v.shape)}"
                     for k, v in expected.items() if k in names and file.shape(k) != tuple(v.shape)]
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise CheckpointError(f"{path} does not fit the model described by its config.json: {shown}")
        with torch.no_grad():
            for key, target in expected.items():
                whole = file.load(key)
                if is_sharded(target):
                    local, begin = local_rows(target)
                    local.copy_(whole[begin:begin + local.shape[0]])
                else:
                    target.copy_(whole)


_ANY_STATE = re.compile(r"train_state(?:-[0-9]{5}-of-[0-9]{5})?\.safetensors")


def stale_state_files(folder: Path, current: list[str]) -> list[Path]:
    """State files of an earlier checkpoint in `folder` that the current one does not use (another world size)."""
    return [Path(folder) / name for name in sorted(os.listdir(folder))
            if _ANY_STATE.fullmatch(name) and name not in current]


def state_json(step: int, tokens: int, elapsed: float, world_size: int, parallel: str, optimizers: dict[str, Any],
               precision: str, data_rng: torch.Tensor, rank_rngs: list[torch.Tensor], files: list[str]) -> dict:
    return {"step": step, "tokens": tokens, "elapsed": elapsed, "world_size": world_size, "parallel": parallel,
            "optimizers": optimizers, "precision": precision, "state_files": files,
            "rng": {"data": encode_rng(data_rng), "torch": [encode_rng(s) for s in rank_rngs]}}
