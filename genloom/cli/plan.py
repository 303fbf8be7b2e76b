"""`genloom plan`: the memory per process of a recipe (or a model size) under DDP and FSDP, and whether it fits."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from ..core.errors import ConfigError
from .options import SetOption

__all__ = ["plan"]

PARTS = ("weights", "gradients", "gradient buckets", "optimizer state", "EMA copy", "gathered weights",
         "optimizer step temporaries", "activations", "activations (checkpointed)")


def _gb(nbytes: float) -> str:
    from ..core.memory import gigabytes

    return gigabytes(nbytes) if nbytes else "-"


def plan(
    recipe: Annotated[str, typer.Argument(help="A built-in recipe name (see `genloom recipes`) or a .toml file.")],
    gpus: Annotated[int, typer.Option("--gpus", min=1, help="Processes (GPUs) the run would use, on all nodes.")] = 1,
    gpu_memory: Annotated[Optional[float], typer.Option("--gpu-memory", min=0.01, help="Memory of one GPU in GB, to "
                          "say whether the run fits (default: this machine's first GPU, where there is one).")] = None,
    size: Annotated[Optional[str], typer.Option("--size", help="Plan a Llama-style transformer of this size instead of "
                    "the recipe's model: 1B, 7B or 70B (the recipe must train a transformer; its data and "
                    "train settings are kept; more dimensions with --set model.KEY=VALUE).")] = None,
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Memory per process of training RECIPE on --gpus processes: weights, gradients, optimizer state, EMA copy
    and activations (with and without train.activation_checkpointing), under DDP and FSDP, and whether each
    fits --gpu-memory. Counted on the meta device (nothing is allocated; the data is prepared to shape a batch).
    The formula is in genloom/train/plan.py; it was checked against measured memory (BENCHMARKS.md)."""
    import torch

    from ..core import registry
    from ..core.config import load_recipe
    from ..train.plan import SIZES, plan_memory, size_overrides
    from ..train.trainer import resolve_config

    overrides = list(set_ or [])
    if size is not None:
        if size not in SIZES:
            raise ConfigError(f"--size: expected one of {', '.join(SIZES)}, got {size!r}")
        overrides = size_overrides(size) + overrides
    config = load_recipe(recipe, overrides)
    if size is not None and config.model.kind != "transformer":
        raise ConfigError(f"--size {size}: the recipe {recipe!r} trains model.kind = {config.model.kind!r}; --size "
                          "plans a transformer (use a text recipe, e.g. shakespeare-char)")
    t = config.train
    per_process, remainder = divmod(t.batch_size, gpus)
    micro = t.micro_batch_size or per_process
    if remainder or not per_process or per_process % micro:
        split = f" x micro-batches of train.micro_batch_size={micro}" if t.micro_batch_size else ""
        raise ConfigError(f"train.batch_size={t.batch_size} must split evenly into --gpus {gpus} process(es){split}")
    data = registry.lookup("data", config.data.kind).build(config.data, config)
    data.prepare()
    config = resolve_config(config, data)
    example = data.batch(data.sample_indices(torch.Generator().manual_seed(0), 1))
    dtype = None if t.precision == "fp32" else torch.bfloat16     # auto: bf16, as on GPUs that have it
    build_model = registry.lookup("model", config.model.kind).build
    build_objective = registry.lookup("objective", config.objective.kind).build
    result = plan_memory(config, lambda: build_model(config.model, config),
                         lambda: build_objective(config.objective, config), example, gpus, micro, dtype)
    if gpu_memory is None and torch.cuda.is_available():
        gpu_memory = torch.cuda.get_device_properties(0).total_memory / 1024**3
    if as_json:
        typer.echo(json.dumps({**result.to_json(), "gpu_memory_gb": gpu_memory, "precision": str(dtype)}, indent=2))
        return
    typer.echo(f"{config.recipe or recipe}{f' at {size}' if size else ''}: {result.parameters / 1e6:,.1f}M parameters, "
               f"{gpus} process(es), micro-batches of {micro} x {data.items_per_example} {data.item_name}, "
               f"{'bf16' if dtype else 'fp32'}, optimizer {t.optimizer}; bytes per process:")
    typer.echo(f"  {'':28}{'DDP':>14}{'FSDP':>14}")
    for part in PARTS:
        typer.echo(f"  {part:28}{_gb(result.rows['ddp'][part]):>14}{_gb(result.rows['fsdp'][part]):>14}")
    for checkpointing in (False, True):
        label = "total, checkpointed" if checkpointing else "total"
        typer.echo(f"  {label:28}{_gb(result.total('ddp', checkpointing)):>14}"
                   f"{_gb(result.total('fsdp', checkpointing)):>14}")
    if result.activations is None:
        typer.echo("  (activations not counted: this objective cannot run on meta tensors)")
    if gpu_memory is None:
        typer.echo("  give --gpu-memory GB to see whether it fits")
        return
    limit = gpu_memory * 1024**3
    fits = [f"{name}{' + activation checkpointing' if c else ''}" for name in ("ddp", "fsdp") for c in (False, True)
            if (name == "ddp" or gpus > 1) and result.total(name, c) <= limit]
    typer.echo(f"  fits {gpu_memory:g} GB per GPU with: {', '.join(fits) if fits else 'none of these'}"
               + ("" if fits or gpus > 1 else " (FSDP needs several processes: raise --gpus)"))
    typer.echo("  (not counted: the CUDA context, ~0.5-1 GB per GPU, allocator slack and communication buffers)")
