"""What every genloom command shares: the options declared once, one-line errors, logging, the sub-apps.

Content packages add their commands in their own `cli.py` (`register(app)`), using these options, so that
`--checkpoint`, `--device`, `--seed` and the rest read the same everywhere.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from ..core.errors import GenloomError

__all__ = ["friendly", "setup_logging", "checkpoint_option", "Device", "NoVerify", "Adapter", "Seed", "num_samples_option",
           "Steps", "Sampler", "Guidance", "Out", "SetOption", "MaxTime", "MaxMemory", "Quantize", "sub_app", "log",
           "announce_seed", "load_handle", "group", "sample_files"]

log = logging.getLogger("genloom")


def checkpoint_option(help: str = "A run folder written by `genloom train` (or a LoRA folder written by "
                                  "`genloom finetune`).") -> type:
    """The --checkpoint option, with a help line that says what kind of model the command wants."""
    return Annotated[Path, typer.Option("--checkpoint", help=help)]


def num_samples_option(help: str, default_help: str = "") -> type:
    return Annotated[int, typer.Option("--num-samples", min=1, help=help + default_help)]


Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
NoVerify = Annotated[bool, typer.Option("--no-verify", help="Skip checking the weight files against the SHA-256 sums "
                                        "written with them (for huge files; a damaged file then loads "
                                        "unnoticed).")]
Adapter = Annotated[Optional[Path], typer.Option("--adapter", help="A LoRA adapter folder (written by `genloom "
                                                 "finetune`) to apply to the model in --checkpoint.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed; sample i uses seed + i (default: a "
                                             "random seed, printed).")]
Quantize = Annotated[Optional[str], typer.Option(
    "--quantize", metavar="int8|int4", help="Text models: store the linear weights in fewer bits for faster CPU "
    "decoding (not with adapters). int8: one byte a weight and a scale per output row, 4x fewer weight bytes "
    "than fp32 (on x86 the activations are rounded to 8 bits too); perplexity +0.1% on a shakespeare-char "
    "model. int4: 4-bit codes in groups of 128 inputs, each group with a scale and zero point, about 7.5x "
    "fewer weight bytes than fp32, CPU only; perplexity +1.2%. Speed and figures: docs/cli.md.")]
Steps = Annotated[Optional[int], typer.Option("--steps", min=1, help="Sampler steps (default: the recipe's).")]
Sampler = Annotated[Optional[str], typer.Option("--sampler", help="ddpm, ddim, dpmpp_2m, euler or heun "
                                                "(default: the recipe's).")]
Guidance = Annotated[Optional[float], typer.Option("--guidance", min=0.0, help="Classifier-free guidance scale: "
                                                   "1 = none, higher = closer to the prompt, less varied "
                                                   "(default: the recipe's).")]
Out = Annotated[Optional[Path], typer.Option("--out", help="Run folder for the checkpoint, metrics.csv, loss.png "
                                             "and samples/ (default: runs/RECIPE-DATE-TIME).")]
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a recipe value: section.key=value (sections: data, model, objective, train, finetune). "
                  "Repeat for several, e.g. --set model.n_layer=4 --set train.lr=3e-4.")]
MaxMemory = Annotated[Optional[float], typer.Option(
    "--max-memory", min=0.0, help="GB of memory the run may use; it is refused before allocating anything when "
                                  "its model and batch need more (default: the memory available at start).")]
MaxTime = Annotated[Optional[float], typer.Option(
    "--max-time", help="Stop after this many seconds of wall time, counted from the command (start-up included) "
    "and keeping back time for the final evaluation and checkpoint; the learning-rate schedule is fitted to it, "
    "and torch.compile (train.compile=auto) runs only when it pays within it.")]


def sub_app(help: str) -> typer.Typer:
    return typer.Typer(no_args_is_help=True, rich_markup_mode=None, help=help)


def friendly(command: Callable) -> Callable:
    """Print a user mistake as one clear line instead of a traceback."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GenloomError as e:
            typer.echo(f"genloom: error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("genloom: interrupted", err=True)
            raise typer.Exit(130) from None
    return run


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("genloom: %(message)s" if rank == 0 else f"genloom[rank {rank}]: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.propagate = False


def announce_seed(handle, seed: int | None) -> int:
    """The seed a command uses: the given one, or a random one, printed so the sample can be made again."""
    if seed is None:
        seed = handle.draw_seed(None)
        typer.echo(f"genloom: seed {seed}", err=True)
    return seed


def load_handle(checkpoint: Path, device: str, wanted: type | tuple[type, ...], hint: str, adapter: Path | None = None,
                verify: bool = True, **options):
    """`genloom.load` of --checkpoint, refused in one line unless it is a `wanted` handle (`hint` says which
    model the command needs, e.g. "a music model; train one with the bach-chorales recipe")."""
    from .. import api

    handle = api.load(checkpoint, device=device, adapters=[adapter] if adapter else None, verify=verify, **options)
    if not isinstance(handle, wanted):
        raise GenloomError(f"{checkpoint} is not {hint} (it holds a {type(handle).__name__})")
    return handle


def sample_files(prompts: list[str], num_samples: int, seed: int, out: Path) -> list[Path]:
    """OUT/<prompt in words>-<seed> for each sample, prompt-major (sample j of a prompt uses seed + j)."""
    return [out / f"{'-'.join(prompts[i // num_samples].lower().replace(',', '').split())[:60]}-{seed + i % num_samples}"
            for i in range(len(prompts) * num_samples)]


def group(app: typer.Typer, name: str, help: str = "") -> typer.Typer:
    """The sub-command group `name` of `app` (e.g. "generate"), made when a content package first adds to it."""
    for info in app.registered_groups:
        if info.name == name:
            return info.typer_instance
    sub = sub_app(help)
    app.add_typer(sub, name=name)
    return sub
