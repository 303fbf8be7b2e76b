"""The public Python API. The command line and the server are thin layers over these functions."""

from __future__ import annotations

import datetime
import os
import secrets
from pathlib import Path
from typing import Iterator

import torch

from . import registry
from .config import RunConfig, load_recipe
from .data.tokenizers import TextTokenizer
from .errors import CheckpointError
from .eval.text import TextEvalResult, evaluate_text
from .generate.text import TextStream, encode_prompt, generate_tokens
from .train import checkpoint as ckpt
from .train.trainer import Trainer, TrainResult

__all__ = ["train", "load", "TextModel", "default_run_dir"]


def default_run_dir(recipe: str) -> Path:
    """runs/<recipe>-<date>-<time> in the current directory (never an existing folder)."""
    name = Path(recipe).stem if recipe.endswith(".toml") else recipe
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path("runs") / f"{name}-{stamp}-{n}"
    return path


def train(recipe: str | RunConfig, out: str | Path | None = None, overrides: list[str] | None = None,
          max_time: float | None = None, resume: bool = False) -> TrainResult:
    """Train a built-in recipe, a TOML file or a RunConfig into `out` (a checkpoint directory)."""
    overrides = list(overrides or [])
    if max_time is not None:
        overrides.append(f"train.max_time={max_time}")
    if isinstance(recipe, RunConfig):
        config = recipe
        if overrides:
            from .config import apply_overrides
            config = RunConfig.from_dict(apply_overrides(config.to_dict(), overrides))
    else:
        config = load_recipe(recipe, overrides)
    out = Path(out) if out is not None else default_run_dir(config.recipe or "run")
    return Trainer(config, out, resume=resume).fit()


class TextModel:
    """A trained language model with its tokenizer: generate text, stream it, score it."""

    def __init__(self, path: Path, config: RunConfig, model: torch.nn.Module, tokenizer: TextTokenizer):
        self.path, self.config, self.model, self.tokenizer = path, config, model, tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def stream(self, prompt: str = "", max_new_tokens: int = 256, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, seed: int = 0, use_cache: bool = True) -> Iterator[str]:
        """Yield pieces of the continuation of `prompt` as they are sampled."""
        prompt_ids = torch.tensor([encode_prompt(self.tokenizer, prompt)], device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        stream = TextStream(self.tokenizer)
        for token in generate_tokens(self.model, prompt_ids, max_new_tokens, [generator], temperature, top_k,
                                     top_p, use_cache):
            piece = stream.push(int(token[0]))
            if piece:
                yield piece

    def generate(self, prompt: str = "", max_new_tokens: int = 256, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, num_samples: int = 1,
                 use_cache: bool = True) -> list[str]:
        """`num_samples` continuations of `prompt` (without the prompt). Sample i uses seed + i.

        Without a seed, one is drawn at random and kept in `self.last_seed`.
        """
        seed = secrets.randbelow(2**31) if seed is None else seed
        self.last_seed = seed
        prompt_ids = torch.tensor([encode_prompt(self.tokenizer, prompt)] * num_samples, device=self.device)
        generators = [torch.Generator(device=self.device).manual_seed(seed + i) for i in range(num_samples)]
        rows: list[list[int]] = [[] for _ in range(num_samples)]
        for tokens in generate_tokens(self.model, prompt_ids, max_new_tokens, generators, temperature, top_k,
                                      top_p, use_cache):
            for row, token in zip(rows, tokens.tolist()):
                row.append(token)
        return [self.tokenizer.decode(row) for row in rows]

    def evaluate(self, data_path: str | None = None, progress: bool = True) -> TextEvalResult:
        """Loss on the validation split of the training data, or of `data_path` split the same way."""
        return evaluate_text(self.model, self.tokenizer, self.config.data, data_path, progress=progress)


def load(path: str | Path, device: str = "auto") -> TextModel:
    """Open a checkpoint directory written by `genloom train`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory (expected a genloom checkpoint directory)")
    ckpt.recover(path)
    for name in (ckpt.CONFIG_FILE, ckpt.MODEL_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is missing {name}; is it a genloom checkpoint directory?")
    config = RunConfig.from_json_file(path / ckpt.CONFIG_FILE)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = registry.lookup("model", config.model.kind).build(config.model, config)
    ckpt.load_weights(model, path / ckpt.MODEL_FILE)
    model.to(device).eval()
    if config.objective.kind != "lm":
        raise CheckpointError(f"{path}: objective {config.objective.kind!r} has no generation handle yet")
    tokenizer = TextTokenizer.load(path / "tokenizer.json")
    if tokenizer.vocab_size > config.model.vocab_size:
        raise CheckpointError(f"{path}/tokenizer.json has {tokenizer.vocab_size} tokens but the model only "
                              f"{config.model.vocab_size}")
    return TextModel(path, config, model, tokenizer)
