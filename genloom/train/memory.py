"""What a run or a loaded model will need, counted on PyTorch's meta device before anything is allocated.

The model is built on the meta device (shapes only, no storage), so its parameters are counted for free;
one micro-batch's activations are counted by running the objective's loss on meta tensors (module outputs,
recorded by forward hooks), from one real example expanded to the micro-batch size. What the count leaves
out (allocator slack, the data itself, the compile cache) is why `core.memory.require` compares it with the
memory available, not with the machine's total.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

from ..core.memory import gigabytes, require

__all__ = ["meta_model", "meta_batch", "training_bytes", "estimate_training", "check_training_fits", "check_weights_fit"]

log = logging.getLogger(__name__)

OPTIMIZER_STATES = 2          # AdamW keeps two moments per parameter (Muon one; counted as two)


def meta_model(build: Callable[[], nn.Module]) -> nn.Module | None:
    """`build()` on the meta device (None where a builder cannot run there)."""
    try:
        with torch.device("meta"):
            return build()
    except Exception as error:                   # a builder that reads files or needs real tensors
        log.debug("no meta-device estimate: %s", error)
        return None


def meta_batch(value: Any, size: int) -> Any:
    """A batch on the meta device with `size` examples (the first dimension expanded)."""
    if isinstance(value, torch.Tensor):
        meta = value.to("meta")
        return meta.expand(size, *meta.shape[1:]) if meta.dim() else meta
    if isinstance(value, (tuple, list)):
        return type(value)(meta_batch(v, size) for v in value)
    if isinstance(value, dict):
        return {k: meta_batch(v, size) for k, v in value.items()}
    return value


def activation_bytes(model: nn.Module, objective, example: Any, micro_batch: int) -> int | None:
    """Bytes of the leaf modules' outputs for one forward pass of `micro_batch` examples (None if the
    objective cannot run on meta tensors)."""
    total = [0]

    def count(module, inputs, output):
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total[0] += tensor.numel() * tensor.element_size()

    model.eval()               # an estimate, not a training step (objectives and tests may count those)
    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        batch = meta_batch(example, micro_batch)
        for phase in objective.phases:
            objective.loss(phase, model, batch)
    except Exception as error:
        log.debug("no activation estimate: %s", error)
        return None
    finally:
        for hook in hooks:
            hook.remove()
    return total[0]


def training_bytes(parameters: int, trainable: int, activations: int | None, ema: bool, shards: int = 1) -> int:
    """Weights (fp32), gradients and optimizer moments of the trainable ones, an EMA copy, and activations
    kept for the backward pass (counted twice: outputs and their gradients). `shards`: the processes FSDP
    splits the weights, gradients, moments and EMA copy over (activations are each process's own)."""
    state = 4 * parameters + 4 * trainable * (1 + OPTIMIZER_STATES) + (4 * parameters if ema else 0)
    return -(-state // max(1, shards)) + 2 * (activations or 0)


def estimate_training(config, data, build_model: Callable[[], nn.Module], build_objective: Callable[[], Any],
                      micro_batch: int) -> tuple[int, int | None] | None:
    """(parameters, activation bytes of one micro-batch or None) counted on the meta device; None when the
    model cannot be built there."""
    with torch.random.fork_rng(devices=[]):        # the estimate must not change what the run draws
        model = meta_model(build_model)
        if model is None:
            return None
        parameters = sum(p.numel() for p in model.parameters())
        example = data.batch(data.sample_indices(torch.Generator().manual_seed(0), 1))
        return parameters, activation_bytes(model, build_objective(), example, micro_batch)


def check_training_fits(config, data, build_model: Callable[[], nn.Module], build_objective: Callable[[], Any],
                        micro_batch: int, device: str, shards: int = 1,
                        estimate: tuple[int, int | None] | None = None) -> None:
    """Refuse, in one line, a run whose model and micro-batch cannot fit in memory (before building them).
    `shards`: FSDP's number of processes; `estimate`: `estimate_training`'s answer where it was already counted."""
    t = config.train
    estimate = estimate or estimate_training(config, data, build_model, build_objective, micro_batch)
    if estimate is None:
        return
    parameters, activations = estimate
    hint = ("shrink the model (model.d_model, model.n_layer, ...) or the micro-batch (train.micro_batch_size, "
            "train.batch_size), or give --max-memory GB")
    if shards > 1:
        hint = "use more processes, " + hint
    require(training_bytes(parameters, parameters, None, t.ema_decay > 0, shards),
            f"model.kind = {config.model.kind!r} with {parameters:,} parameters (weights, gradients, optimizer)",
            hint, t.max_memory, device)
    need = training_bytes(parameters, parameters, activations, t.ema_decay > 0, shards)
    log.debug("memory estimate: %s (%s parameters, %s of activations per micro-batch of %d)", gigabytes(need),
              f"{parameters:,}", gigabytes(activations or 0), micro_batch)
    require(need, f"training {parameters:,} parameters with micro-batches of {micro_batch} example(s)", hint,
            t.max_memory, device)


def check_weights_fit(config, build_model: Callable[[], nn.Module], where: str, device: str) -> None:
    """Refuse a checkpoint whose config.json describes a model too large to hold (before allocating it)."""
    model = meta_model(build_model)
    if model is None:
        return
    parameters = sum(p.numel() for p in model.parameters())
    require(4 * parameters, f"{where}: model.kind = {config.model.kind!r} with {parameters:,} parameters",
            "is its config.json the one written with these weights?", 0.0, device)
