"""The `genloom` command line: a thin layer over `genloom.api`.

The commands every content type shares (quickstart, recipes, train, finetune, merge, eval, serve) are in
`commands.py`; each content package adds its own (its `genloom generate ...` command, and e.g. `genloom
chat` and `genloom convert` for text) from its `cli.py`, found through the registry.
"""

from __future__ import annotations

import importlib

import typer

from ..core import registry
from . import commands
from .options import setup_logging, sub_app

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="genloom: train, sample and evaluate generative models on a laptop CPU or many GPUs.",
)
app.add_typer(sub_app("Sample from a trained checkpoint (one sub-command per kind of content)."), name="generate")
commands.register(app)
for record in registry.modalities():
    if record.cli:
        importlib.import_module(record.cli).register(app)


def main() -> None:
    setup_logging()
    app(prog_name="genloom")


if __name__ == "__main__":
    main()
