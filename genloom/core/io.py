"""Checkpoints: safetensors for tensors, JSON for everything else, committed atomically.

A checkpoint is a directory. Its files change together through a small journal: the new files are
written to `.staging/`, then a `COMMIT` marker naming them, then each file is moved into place. A kill
before the marker leaves the previous checkpoint untouched; a kill after it is finished by the next
reader (`recover`). Nothing is ever unpickled.

The journal moves only plain file names of the kinds a checkpoint or a cache folder holds (`journal_name_problem`):
`config.json`, `model.safetensors`, `tokenizer.json`, ... and the `NAME.safetensors` + `NAME.json` of the
networks `core.cache` keeps. A `COMMIT` naming anything else (`../x`, `/etc/x`, `a/b`, `.x`), or that is not
a list of such names, or names a file that is not there, is refused with a `CheckpointError` before any
file moves, so a crafted checkpoint cannot write outside its folder.

Integrity: `commit` records the SHA-256 of every `.safetensors` file it writes in `checksums.json`, moved by
the same journal (so the sums and the files never disagree after a kill), and `load_tensors` /
`load_weights` check a file against it (`verify=False` skips the check for huge files). Folders written
before checksums existed have no `checksums.json` and load unchecked. The sums catch damage (bit rot, a
truncated copy); they are not a signature: whoever writes a checkpoint writes its sums too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

__all__ = ["CONFIG_FILE", "MODEL_FILE", "EMA_FILE", "STATE_FILE", "STATE_JSON", "CHECKSUMS_FILE", "CHECKPOINT_FILES",
           "STATE_SHARD", "journal_name_problem", "commit", "begin_commit", "finish_commit", "recover", "fsync", "save_tensors", "load_tensors", "load_weights", "sha256_file",
           "recorded_sha256", "write_json_atomic", "TensorFile", "save_tensors_streamed", "DTYPES"]

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"          # the averaged weights, where the run keeps them (train.ema_decay > 0)
STATE_FILE = "train_state.safetensors"
STATE_JSON = "train_state.json"
CHECKSUMS_FILE = "checksums.json"     # {"format": ..., "sha256": {file name: hex digest}}, written by `commit`
CHECKSUMS_FORMAT = "genloom-checksums-1"
STAGING = ".staging"
COMMIT_MARK = "COMMIT"

# The files every checkpoint folder may hold; each content type adds the assets its Modality record names
# (`checkpoint_files()`). A cache folder holds `NAME.safetensors` + `NAME.json` per network
# (`core.cache.cached_network`), accepted by the pattern below.
CHECKPOINT_FILES = frozenset({
    CONFIG_FILE, MODEL_FILE, EMA_FILE, STATE_FILE, STATE_JSON, CHECKSUMS_FILE,
    "adapter.safetensors", "adapter.json",                               # LoRA runs (train.finetune)
})


def checkpoint_files() -> frozenset[str]:
    """Every name the journal may move: the files above and every content type's `Modality.assets`."""
    from . import registry

    return CHECKPOINT_FILES | {name for record in registry.modalities() for name in record.assets}
_NETWORK_FILE = re.compile(r"[a-z0-9][a-z0-9_-]{0,99}\.(?:safetensors|json)", re.ASCII)
# A sharded run's optimizer state: one file per rank (`genloom.train.checkpoint`).
STATE_SHARD = re.compile(r"train_state-[0-9]{5}-of-[0-9]{5}\.safetensors", re.ASCII)
_MAX_MARKER_BYTES = 4 << 20
_MAX_FILES = 70000                    # a checkpoint of a sharded run holds one state file per rank


def journal_name_problem(name: object) -> str | None:
    """Why `name` may not be moved by the journal (None when it may): it must be one of `checkpoint_files()` or a
    cached network's `NAME.safetensors` / `NAME.json` (NAME: lower-case ASCII letters, digits, '_', '-'), so
    never a path (no '/', '\\', '..'), never hidden, never absolute, no other characters."""
    if not isinstance(name, str):
        return f"{_shown(name)} is not a file name"
    if name in checkpoint_files() or STATE_SHARD.fullmatch(name) or _NETWORK_FILE.fullmatch(name):
        return None
    if "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        return f"{_shown(name)} is a path, not a plain file name"
    return f"{_shown(name)} is not a file a checkpoint holds (plain names such as config.json, model.safetensors)"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    fsync(tmp)
    os.replace(tmp, path)


# -- the journal -------------------------------------------------------------------------------------------
def _refuse(folder: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{folder}: the unfinished commit in {STAGING}/{COMMIT_MARK} is refused: {problem}; nothing "
                           f"was moved (delete {folder / STAGING} to discard it)")


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _planned_moves(folder: Path) -> list[str]:
    """The names `.staging/COMMIT` lists, each checked, before anything moves: a plain checkpoint file name,
    listed once, staged as a regular file (not a link) or already moved by an interrupted roll-forward."""
    staging, marker = folder / STAGING, folder / STAGING / COMMIT_MARK
    if not _is_regular(marker):
        raise _refuse(folder, f"{COMMIT_MARK} is not a regular file")
    try:
        with open(marker, "rb") as f:
            raw = f.read(_MAX_MARKER_BYTES + 1)
        if len(raw) > _MAX_MARKER_BYTES:
            raise _refuse(folder, f"it is over {_MAX_MARKER_BYTES} bytes")
        record = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:       # (UnicodeDecodeError and JSONDecodeError among them)
        raise _refuse(folder, f"it is not readable JSON ({type(e).__name__})") from None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, list):
        raise _refuse(folder, f'it is not {{"files": [names]}} (found {_shown(record)})')
    if len(files) > _MAX_FILES:
        raise _refuse(folder, f"it lists {len(files)} files (a checkpoint has at most {_MAX_FILES})")
    for name in files:
        problem = journal_name_problem(name)
        if problem:
            raise _refuse(folder, problem)
    if len(set(files)) != len(files):
        raise _refuse(folder, "it lists a file twice")
    for name in files:
        staged, target = staging / name, folder / name
        if os.path.lexists(staged):
            if not _is_regular(staged):
                raise _refuse(folder, f"{name} is staged as a link or a folder, not a file")
            if target.is_dir() and not target.is_symlink():
                raise _refuse(folder, f"it would replace the folder {target} with a file")
        elif not _is_regular(target):            # not moved already (a previous, interrupted roll-forward)
            raise _refuse(folder, f"{name} is neither staged nor in the folder")
    return files


def _check_staging_folder(folder: Path) -> None:
    staging = folder / STAGING
    if staging.is_symlink() or (os.path.lexists(staging) and not staging.is_dir()):
        raise CheckpointError(f"{staging} is not a folder (a link or a file); genloom keeps its unfinished "
                              f"commits there, so it refuses to use it: delete it")


def _roll_forward(folder: Path) -> None:
    staging = folder / STAGING
    for name in _planned_moves(folder):
        if os.path.lexists(staging / name):
            try:
                os.replace(staging / name, folder / name)
            except OSError as e:
                raise CheckpointError(f"{folder}: cannot move {STAGING}/{name} into place ({e}); run again to "
                                      "finish the commit") from None
    (staging / COMMIT_MARK).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)


def recover(folder: Path) -> None:
    """Finish a commit that was interrupted after its marker was written (safe to call any time). A marker
    that names anything but the plain file names a checkpoint holds is refused (`CheckpointError`) and
    nothing moves."""
    folder = Path(folder)
    if not os.path.lexists(folder / STAGING):
        return
    _check_staging_folder(folder)
    if os.path.lexists(folder / STAGING / COMMIT_MARK):
        _roll_forward(folder)


def begin_commit(folder: Path) -> Path:
    """Finish or discard any earlier commit and return an empty `.staging/` folder to write the new files into
    (the first half of `commit`; a sharded save has every rank write its own files there, then one rank calls
    `finish_commit`)."""
    folder = Path(folder)
    recover(folder)
    staging = folder / STAGING
    _check_staging_folder(folder)
    shutil.rmtree(staging, ignore_errors=True)  # an unfinished earlier attempt
    staging.mkdir(parents=True)
    return staging


def finish_commit(folder: Path, names: list[str], sums: dict[str, str] | None = None) -> None:
    """Move the files `names` staged by `begin_commit` into place together: the checksums, then the marker
    (last), then the moves. `sums`: SHA-256s already computed where each file was written (the others are
    computed here). Every name must pass `journal_name_problem` and be staged (fsynced by its writer)."""
    folder = Path(folder)
    staging = folder / STAGING
    for name in names:
        problem = journal_name_problem(name)
        if problem or name == CHECKSUMS_FILE:
            raise CheckpointError(f"commit to {folder}: {problem or f'{CHECKSUMS_FILE} is written by commit itself'}")
        if not _is_regular(staging / name):
            raise CheckpointError(f"commit to {folder}: {name} was not staged (a process did not write its part)")
    names = list(names)
    given = sums or {}
    sums = {name: given.get(name) or sha256_file(staging / name) for name in names if name.endswith(".safetensors")}
    kept = {name: digest for name, digest in (_read_checksums(folder, strict=False) or {}).items()
            if name not in names and journal_name_problem(name) is None and _is_regular(folder / name)}
    if sums or kept or (folder / CHECKSUMS_FILE).exists():
        write_json_atomic(staging / CHECKSUMS_FILE, {"format": CHECKSUMS_FORMAT, "sha256": dict(sorted({**kept, **sums}.items()))})
        names.append(CHECKSUMS_FILE)
    write_json_atomic(staging / COMMIT_MARK, {"files": names})
    _roll_forward(folder)


def commit(folder: Path, writers: dict[str, Callable[[Path], None]]) -> None:
    """Write the files named in `writers` so that they replace the old ones all together or not at all.

    Each name must pass `journal_name_problem`. The SHA-256 of every `.safetensors` file written is recorded in
    `checksums.json` (with the sums already there for the folder's other files), in the same commit."""
    folder = Path(folder)
    for name in writers:
        problem = journal_name_problem(name)
        if problem or name == CHECKSUMS_FILE:
            raise CheckpointError(f"commit to {folder}: {problem or f'{CHECKSUMS_FILE} is written by commit itself'}")
    staging = begin_commit(folder)
    for name, write in writers.items():
        write(staging / name)
        fsync(staging / name)
    finish_commit(folder, list(writers))


# -- integrity -----------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, as 64 hex digits (about 0.5 s per 500 MB on one core with SHA extensions)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_checksums(folder: Path, strict: bool) -> dict[str, str] | None:
    """`folder/checksums.json` as {name: digest}; None when there is none. A damaged one raises (`strict`) or
    counts as none."""
    record_path = Path(folder) / CHECKSUMS_FILE
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        problem = None if isinstance(record, dict) else "not a JSON object"
    except (OSError, ValueError, RecursionError) as e:
        record, problem = None, f"not readable JSON ({type(e).__name__})"
    if problem is None and record.get("format") != CHECKSUMS_FORMAT:
        problem = f"format {_shown(record.get('format'))}, expected {CHECKSUMS_FORMAT!r}"
    sums = record.get("sha256") if problem is None else None
    if problem is None and not (isinstance(sums, dict) and all(
            isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in sums.values())):
        problem = "its sha256 entry is not {file name: 64 hex digits}"
    if problem is None:
        return sums
    if strict:
        raise CheckpointError(f"{record_path}: not genloom's record of SHA-256 sums ({problem}); load with "
                              "verify=False (--no-verify) to skip the check")
    return None


def recorded_sha256(path: Path) -> str | None:
    """The SHA-256 that `commit` recorded for `path` (in the `checksums.json` beside it), or None when none was
    (a folder written before checksums, or a file written outside `commit`)."""
    path = Path(path)
    return (_read_checksums(path.parent, strict=True) or {}).get(path.name)


def _verify(path: Path) -> None:
    expected = recorded_sha256(path)
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"{path} is damaged: its SHA-256 ({actual[:16]}...) is not the one recorded in "
                              f"{CHECKSUMS_FILE} when it was written ({expected[:16]}...); load with verify=False "
                              "(--no-verify) to use it anyway")


# -- tensors -------------------------------------------------------------------------------------------------
def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)


def _checked_weights_file(path: Path, verify: bool) -> Path:
    """`path`, refused in one line when it is missing or (with `verify`) unreadable or unlike its recorded SHA-256."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (is {path.parent} a genloom checkpoint directory?)")
    if verify:
        try:
            _verify(path)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot be read ({e})") from None
    return path


def load_tensors(path: Path, verify: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file. With `verify` (the default) the file is first checked against the
    SHA-256 that `commit` recorded for it, where one was (`checksums.json` beside it)."""
    path = _checked_weights_file(path, verify)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def load_weights(module: torch.nn.Module, path: Path, prefix: str = "", verify: bool = True) -> None:
    """Load `module`'s weights from a safetensors file, naming every missing or misshapen tensor (`verify`: as
    in `load_tensors`). The file is read one tensor at a time into the module's own parameters (converted to
    their dtype), so loading needs the model's memory and one tensor more."""
    path = _checked_weights_file(path, verify)
    with TensorFile(path) as file:
        tensors = {k[len(prefix):]: k for k in file.names() if k.startswith(prefix)}
        expected = module.state_dict(keep_vars=True)
        problems = [f"missing {k}" for k in expected if k not in tensors]
        problems += [f"unexpected {k}" for k in tensors if k not in expected]
        problems += [f"{k}: checkpoint has shape {file.shape(tensors[k])}, the model expects {tuple(v.shape)}"
                     for k, v in expected.items() if k in tensors and file.shape(tensors[k]) != tuple(v.shape)]
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise CheckpointError(f"{path} does not fit the model described by its config.json: {shown}")
        with torch.no_grad():
            for key, target in expected.items():
                target.copy_(file.load(tensors[key]))


# -- tensor by tensor ----------------------------------------------------------------------------------------
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 << 20


class TensorFile:
    """A safetensors file read one tensor at a time with plain reads (nothing memory-mapped, so a tensor's
    bytes are resident only while the caller holds it). The header is checked before anything is read:
    known dtypes, integer shapes, and offsets that tile the data exactly, inside the file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot be read ({e})") from None
        try:
            self._entries, self.metadata, self._start = self._header()
        except BaseException:
            self._file.close()
            raise

    def _bad(self, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: not a readable safetensors file ({problem})")

    def _header(self):
        size = os.fstat(self._file.fileno()).st_size
        raw = self._file.read(8)
        if len(raw) < 8:
            raise self._bad("shorter than its 8-byte header length")
        length = int.from_bytes(raw, "little")
        if length > min(_MAX_HEADER, size - 8):
            raise self._bad(f"a header of {length} bytes")
        try:
            header = json.loads(self._file.read(length).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise self._bad(f"its header is not JSON: {type(e).__name__}") from None
        if not isinstance(header, dict):
            raise self._bad("its header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        entries, spans = {}, []
        for name, entry in header.items():
            try:
                dtype, shape, (begin, end) = DTYPES[entry["dtype"]], entry["shape"], entry["data_offsets"]
                if not all(type(d) is int and d >= 0 for d in shape) or not (type(begin) is int and type(end) is int):
                    raise TypeError
            except (KeyError, TypeError, ValueError):
                raise self._bad(f"entry {name[:100]!r} is not a known dtype, shape and offsets") from None
            count = math.prod(shape)
            if end - begin != count * torch.empty(0, dtype=dtype).element_size():
                raise self._bad(f"{name[:100]!r}: offsets {begin}..{end} do not hold shape {shape}")
            entries[name] = (dtype, tuple(shape), begin, end)
            spans.append((begin, end))
        at = 0
        for begin, end in sorted(spans):
            if begin != at:
                raise self._bad("tensor data overlaps or leaves gaps")
            at = end
        if 8 + length + at > size:
            raise self._bad(f"its tensors need {8 + length + at} bytes, the file has {size}")
        return entries, metadata, 8 + length

    def __enter__(self) -> "TensorFile":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> torch.dtype:
        return self._entries[name][0]

    def load(self, name: str) -> torch.Tensor:
        dtype, shape, begin, end = self._entries[name]
        buffer = bytearray(end - begin)
        self._file.seek(self._start + begin)
        if self._file.readinto(buffer) != len(buffer):
            raise self._bad(f"{name!r} is cut short")
        if not buffer:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(shape)


def save_tensors_streamed(tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file from tensors made one at a time: `tensors` maps names to objects with `shape`,
    `dtype` and `load()` (e.g. `genloom.lm.hf.Deferred`); only one is in memory at any moment."""
    names = sorted(tensors)
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    at = 0
    for name in names:
        item = tensors[name]
        nbytes = math.prod(item.shape) * torch.empty(0, dtype=item.dtype).element_size()
        header[name] = {"dtype": DTYPE_NAMES[item.dtype], "shape": list(item.shape), "data_offsets": [at, at + nbytes]}
        at += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in names:
            tensor = tensors[name].load().detach().cpu().contiguous()
            expected = header[name]
            if list(tensor.shape) != expected["shape"] or DTYPE_NAMES[tensor.dtype] != expected["dtype"]:
                raise CheckpointError(f"{name}: made a tensor of shape {list(tensor.shape)} {tensor.dtype}, announced "
                                      f"as {expected['shape']} {expected['dtype']}")
            if tensor.numel():
                f.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
            del tensor
