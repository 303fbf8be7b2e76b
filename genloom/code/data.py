"""Source code for code models: the CPython standard library (built in) or any folder of source files,
a byte-level BPE tokenizer trained on code, and fill-in-the-middle (FIM) training examples.

Files: every file with one of `extensions` under the folder (the standard library is found through
`sysconfig`; test folders are skipped), identical files kept once, and a deterministic hash of each
file's relative path putting about `val_fraction` of them in the validation split — whole files, so the
validation code is code the model never saw.

FIM (Bavarian et al. 2022, "Efficient Training of Language Models to Fill in the Middle"): files are cut
into pieces of about `chunk_chars` characters at line ends; a `fim_rate` share of the training pieces is
cut again at two random characters into (prefix, middle, suffix) and written as
    PSM: <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle <|endoftext|>
or, a `spm_rate` share of those,
    SPM: <|fim_prefix|> <|fim_suffix|> suffix <|fim_middle|> prefix middle <|endoftext|>
so that one model both continues code and fills in a gap. Validation pieces stay plain (perplexity and
bits per byte are measured on ordinary code).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from ..core.cache import default_cache_dir
from ..core.config import require, validate
from ..core.errors import DataError
from ..core.registry import register
from ..lm.tokenizers import END_OF_TEXT, TextTokenizer
from ..lm.windows import TokenWindows

__all__ = ["CodeDataConfig", "CodeData", "code_files", "fim_tokens", "pieces"]

log = logging.getLogger(__name__)

FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"
SPECIAL_TOKENS = [END_OF_TEXT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX]
SKIPPED_FOLDERS = {"test", "tests", "idle_test", "site-packages", "__pycache__", ".git", "node_modules", ".venv",
                   "venv", "build", "dist"}
CACHE_FORMAT = 1


@dataclass(frozen=True)
class CodeDataConfig:
    kind: Literal["code"] = "code"
    path: str = "builtin:stdlib"         # builtin:stdlib (CPython's standard library), or a folder / git checkout
    extensions: tuple[str, ...] = (".py",)   # which files of the folder are source
    vocab_size: int = 4096               # byte-level BPE vocabulary (special tokens included)
    val_fraction: float = 0.05           # share of files held out (chosen by a hash of the path)
    fim_rate: float = 0.5                # share of training pieces turned into fill-in-the-middle examples
    spm_rate: float = 0.5                # share of those in suffix-prefix-middle order (the rest prefix-suffix-middle)
    chunk_chars: int = 1500              # files are cut into pieces of about this size, at line ends
    seed: int = 0                        # seeds the FIM cuts
    cache_dir: str = ""                  # "" = $GENLOOM_CACHE or ~/.cache/genloom

    def __post_init__(self) -> None:
        validate(self, "data")
        require(0 < self.val_fraction < 1, "data.val_fraction", "must be between 0 and 1 (e.g. 0.05)")
        require(0 <= self.fim_rate <= 1, "data.fim_rate", "must be in [0, 1]")
        require(0 <= self.spm_rate <= 1, "data.spm_rate", "must be in [0, 1]")
        require(self.vocab_size >= 264, "data.vocab_size", "must be at least 264 (256 bytes and the special tokens)")
        require(self.chunk_chars >= 100, "data.chunk_chars", "must be at least 100")
        require(all(e.startswith(".") for e in self.extensions), "data.extensions",
                f"expected extensions such as [\".py\"], got {list(self.extensions)}")


def _root(path: str) -> Path:
    if path == "builtin:stdlib":
        return Path(sysconfig.get_paths()["stdlib"])
    if path.startswith("builtin:"):
        raise DataError(f"data.path: unknown built-in code corpus {path!r}; available: builtin:stdlib")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path: {path} is not a folder (expected builtin:stdlib or a folder of source files)")
    return root


# `git ls-files` in a folder of someone else's code must not run their commands. Git runs programs named in
# its configuration, and the folder's own .git/config is read whatever we do, so every key that can name a
# program git might start here is overridden on the command line (which wins over every config file), the
# system and global config files are not read, no hook can run, nothing comes from the caller's GIT_*
# variables (GIT_DIR, GIT_CONFIG_PARAMETERS, GIT_EXTERNAL_DIFF, ...), and nothing prompts or pages.
# `ls-files` without options only reads the index: no filters, no diff, no network.
_GIT_SAFE_CONFIG = (
    "core.fsmonitor=false",           # the fsmonitor hook: an arbitrary command run on every index read
    "core.hooksPath=/dev/null",       # no hooks at all
    "core.pager=cat", "pager.ls-files=false", "core.editor=false", "sequence.editor=false",
    "core.sshCommand=false", "core.askPass=false", "credential.helper=", "protocol.allow=never",
    "diff.external=", "core.gitProxy=false", "gpg.program=false", "core.alternateRefsCommand=false",
)


def _git_ls_files(root: Path) -> list[str] | None:
    """The files git tracks under `root` (relative names), or None when git cannot say; git runs so that
    nothing in the folder's configuration can make it execute a program (see _GIT_SAFE_CONFIG)."""
    git = shutil.which("git")
    if git is None:
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_SYSTEM=os.devnull,
               GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", GIT_ASKPASS="false", SSH_ASKPASS="false",
               GIT_PAGER="cat", PAGER="cat", GIT_EDITOR="false")
    command = [git, "--no-pager"]
    for setting in _GIT_SAFE_CONFIG:
        command += ["-c", setting]
    command += ["-C", str(root), "ls-files", "-z"]
    try:
        listed = subprocess.run(command, capture_output=True, env=env, stdin=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        return None
    return [name for name in listed.stdout.decode(errors="replace").split("\0") if name]


def _listing(root: Path) -> list[Path]:
    """Every file under `root`, sorted; in a git checkout, the files git tracks (so ignored build output and
    virtual environments stay out), listed by a git that cannot run the checkout's commands. A link to a file
    outside the folder is left out (a folder of code must not bring, say, ~/.ssh/id_rsa into the data)."""
    files = None
    if (root / ".git").exists():
        names = _git_ls_files(root)
        if names is not None:
            files = [root / name for name in names]
    if files is None:
        files = list(root.rglob("*"))
    inside = root.resolve()
    return sorted(f for f in files if _within(f, inside))


def _within(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder)
    except (OSError, RuntimeError):          # a loop of links
        return False


def code_files(path: str, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    """(relative path, text) of every source file, sorted, identical contents kept once (the first path)."""
    root = _root(path)
    seen: set[str] = set()
    out = []
    for file in _listing(root):
        relative = file.relative_to(root)
        if file.suffix not in extensions or not file.is_file() or any(
                part in SKIPPED_FOLDERS or part.startswith(".") for part in relative.parts[:-1]):
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue                                   # not UTF-8 text: not source we can learn from
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in seen or not text.strip():
            continue
        seen.add(digest)
        out.append((relative.as_posix(), text))
    if not out:
        raise DataError(f"data.path: no {'/'.join(extensions)} files under {root}")
    return out


def is_validation(relative: str, fraction: float) -> bool:
    return zlib.crc32(relative.encode()) % 10_000 < fraction * 10_000


def pieces(text: str, size: int) -> Iterator[str]:
    """`text` cut at line ends into pieces of about `size` characters (a longer line stays whole)."""
    start = 0
    while start < len(text):
        end = text.rfind("\n", start, start + size) + 1 if start + size < len(text) else len(text)
        if end <= start:
            end = text.find("\n", start + size)
            end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def fim_tokens(tokenizer: TextTokenizer, piece: str, rng: np.random.Generator, fim_rate: float,
               spm_rate: float) -> list[int]:
    """The token ids of one training piece: plain, or cut into a FIM example (PSM or SPM), ending in EOT."""
    special = {name: tokenizer.token_id(name) for name in SPECIAL_TOKENS}
    if rng.random() >= fim_rate or len(piece) < 3:
        return tokenizer.encode(piece) + [special[END_OF_TEXT]]
    a, b = sorted(rng.integers(0, len(piece) + 1, size=2).tolist())
    prefix, middle, suffix = (tokenizer.encode(part) for part in (piece[:a], piece[a:b], piece[b:]))
    if rng.random() < spm_rate:
        ids = [special[FIM_PREFIX], special[FIM_SUFFIX]] + suffix + [special[FIM_MIDDLE]] + prefix + middle
    else:
        ids = [special[FIM_PREFIX]] + prefix + [special[FIM_SUFFIX]] + suffix + [special[FIM_MIDDLE]] + middle
    return ids + [special[END_OF_TEXT]]


def train_code_tokenizer(texts: Iterator[str], vocab_size: int) -> TextTokenizer:
    return TextTokenizer.train_bpe(texts, vocab_size, special_tokens=SPECIAL_TOKENS)


class CodeData(TokenWindows):
    """Token arrays of the training pieces (FIM applied once, seeded) and of the plain validation files."""

    def __init__(self, config: CodeDataConfig, block_size: int, tokenizer: TextTokenizer | None = None):
        self.config, self.block_size, self.tokenizer = config, block_size, tokenizer
        self._arrays: dict[str, np.ndarray] = {}
        self.meta: dict = {}

    def describe(self) -> str:
        return "CPython's standard library" if self.config.path == "builtin:stdlib" else self.config.path

    def _key(self, files: list[tuple[str, str]]) -> str:
        h = hashlib.sha256(f"{CACHE_FORMAT}|{json.dumps(self.config.__dict__, sort_keys=True, default=str)}".encode())
        for relative, text in files:
            h.update(relative.encode())
            h.update(hashlib.sha256(text.encode()).digest())
        if self.tokenizer is not None:
            h.update(self.tokenizer.hf.to_str().encode())
        return h.hexdigest()[:20]

    def prepare(self) -> None:
        if self._arrays:
            return
        cfg = self.config
        files = code_files(cfg.path, cfg.extensions)
        root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
        folder = root / "code" / self._key(files)
        if not (folder / "meta.json").is_file():
            self._build(files, folder)
        self.meta = json.loads((folder / "meta.json").read_text())
        if self.tokenizer is None:
            self.tokenizer = TextTokenizer.load(folder / "tokenizer.json")
        for split in ("train", "val"):
            self._arrays[split] = np.load(folder / f"{split}.npy", mmap_mode="r")
        self._check_length(self.describe())

    def _build(self, files: list[tuple[str, str]], folder: Path) -> None:
        cfg = self.config
        train = [(r, t) for r, t in files if not is_validation(r, cfg.val_fraction)]
        val = [(r, t) for r, t in files if is_validation(r, cfg.val_fraction)]
        if not train or not val:
            raise DataError(f"data.path: {cfg.path} has {len(files)} file(s); the hash split left "
                            f"{len(train)} for training and {len(val)} for validation (need both; "
                            "change data.val_fraction or add files)")
        log.info("code corpus %s: %d files (%d held out), %.1f MB", self.describe(), len(files), len(val),
                 sum(len(t) for _, t in files) / 1e6)
        tokenizer = self.tokenizer or train_code_tokenizer((t for _, t in train), cfg.vocab_size)
        rng = np.random.default_rng(cfg.seed)
        eot = tokenizer.token_id(END_OF_TEXT)
        train_pieces = [piece for _, text in train for piece in pieces(text, cfg.chunk_chars)]
        ids = {"train": [i for piece in train_pieces
                         for i in fim_tokens(tokenizer, piece, rng, cfg.fim_rate, cfg.spm_rate)],
               "val": [i for ids in tokenizer.encode_batch([t for _, t in val]) for i in ids + [eot]]}
        tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
        for split, values in ids.items():
            np.save(tmp / f"{split}.npy", np.asarray(values, dtype=dtype))
        tokenizer.save(tmp / "tokenizer.json")
        meta = {"format": CACHE_FORMAT, "source": self.describe(), "files": len(files), "val_files": [r for r, _ in val],
                "train_tokens": len(ids["train"]), "val_tokens": len(ids["val"]),
                "train_bytes": sum(len(t.encode()) for _, t in train), "val_bytes": sum(len(t.encode()) for _, t in val),
                "val_chars": sum(len(t) for _, t in val)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            tmp.rename(folder)
        except OSError:                                 # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)


@register("data", "code", CodeDataConfig)
def build_code_data(config: CodeDataConfig, run, tokenizer: TextTokenizer | None = None) -> CodeData:
    return CodeData(config, run.model.block_size, tokenizer)
