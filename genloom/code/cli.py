"""`genloom generate code`: continue code or fill in a gap with a code model."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..cli.options import (
    Device,
    NoVerify,
    Seed,
    announce_seed,
    checkpoint_option,
    friendly,
    group,
    load_handle,
)
from ..core.errors import GenloomError
from .handle import STOP_RULES, CodeModel

__all__ = ["register"]


def generate_code(
    checkpoint: checkpoint_option("A run folder of a code model (e.g. trained with "
                                  "the python-code recipe)."),
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Code to continue, e.g. \"def mean(xs):\". "
                                                  "The completion ends where the function or block ends.")] = None,
    prefix: Annotated[Optional[str], typer.Option("--prefix", help="Fill in the middle: the code before the gap "
                                                  "(give --suffix too).")] = None,
    suffix: Annotated[Optional[str], typer.Option("--suffix", help="Fill in the middle: the code after the "
                                                  "gap.")] = None,
    stop_at: Annotated[str, typer.Option("--stop-at", help="block: end where the function/block ends; line: end "
                                         "at the end of the line; none: only at the model's end of text.")] = "",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate at most per "
                                                "sample.")] = 256,
    temperature: Annotated[Optional[float], typer.Option("--temperature", min=0.0, help="Sampling temperature; "
                                                         "0 = greedy (default: 0.8 to continue, 0 to fill "
                                                         "in).")] = None,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling: the smallest set of "
                                         "tokens holding this much probability.")] = 0.95,
    seed: Seed = None,
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="How many samples to write.")] = 1,
    no_verify: NoVerify = False,
    device: Device = "auto",
) -> None:
    """Continue Python code (--prompt) or fill in a gap (--prefix and --suffix) with a code model, printing
    the prompt followed by its completion (for a gap: prefix, middle, suffix)."""

    infilling = prefix is not None or suffix is not None
    if infilling and prompt is not None:
        raise GenloomError("give either --prompt (continue code) or --prefix/--suffix (fill in a gap), not both")
    if stop_at and stop_at not in STOP_RULES:
        raise GenloomError(f"--stop-at {stop_at!r}: expected one of {', '.join(STOP_RULES)}")
    model = load_handle(checkpoint, device, CodeModel, "a code model; use `genloom generate text`, or train one "
                        "with the python-code recipe", verify=not no_verify)
    seed = announce_seed(model, seed)
    if temperature is None:
        temperature = 0.0 if infilling else 0.8
    for i in range(num_samples):
        if num_samples > 1:
            typer.echo(f"--- sample {i + 1} (seed {seed + i}) ---", err=True)
        if infilling:
            typer.echo(prefix or "", nl=False)
            pieces = model.stream_code(prefix or "", max_new_tokens=max_new_tokens, temperature=temperature,
                                       top_p=top_p, seed=seed + i, stop_at=stop_at or "none", suffix=suffix or "")
        else:
            typer.echo(prompt or "", nl=False)
            pieces = model.stream_code(prompt or "", max_new_tokens=max_new_tokens, temperature=temperature,
                                       top_p=top_p, seed=seed + i, stop_at=stop_at or "block")
        for piece in pieces:
            typer.echo(piece, nl=False)
        typer.echo(suffix or "" if infilling else "")


def register(app: typer.Typer) -> None:
    group(app, "generate").command("code")(friendly(generate_code))
