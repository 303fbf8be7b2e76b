"""Past one process: DDP or FSDP (`train.parallel`), activation checkpointing, and sharded tensors.

* **DDP** keeps a whole copy of the weights, gradients and optimizer state on every rank and all-reduces the
  gradients. **FSDP** (PyTorch's FSDP2, `torch.distributed.fsdp.fully_shard`) keeps 1/N of each on every rank
  and all-gathers one block's weights just before it runs. `auto` takes DDP when a whole copy fits the
  device (it is faster: no gathering), otherwise FSDP.
* **Units**: every block of the model's `nn.ModuleList`s is its own FSDP unit (lists of lists are entered),
  and so is every direct child of the root that is a network with blocks of its own and whose parameters
  are its own (a GAN's generator and discriminator, which the objective calls one at a time); what is left
  (embeddings, tied or not, norms, heads) belongs to the root, gathered for the whole forward pass.
  Sharding runs bottom-up, deepest units first, as FSDP2 requires.
* **Sharded tensors** are DTensors split along dim 0 (`Shard(0)`): rank r holds rows
  `[r * ceil(n / N), (r + 1) * ceil(n / N))` of an n-row tensor (clipped; `row_range`), the layout FSDP2 uses.
  Checkpoints store each rank's rows with their offset, so a run can resume on any number of processes.
* **Activation checkpointing** keeps only each block's input for the backward pass and runs the block's
  forward again there: less memory for about one more forward pass. It works with or without FSDP.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from ..core.errors import ConfigError

__all__ = ["PARALLEL_CHOICES", "choose_parallel", "shard_units", "blocks", "apply_fsdp", "fsdp_modules",
           "apply_activation_checkpointing", "is_sharded", "full_tensor", "row_range", "local_rows",
           "shard_rows_like", "rows_as_shard", "set_gradient_sync", "keep_gathered"]

log = logging.getLogger(__name__)

PARALLEL_CHOICES = ("auto", "ddp", "fsdp")


def is_sharded(tensor: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a sharded one: every rank must call it, in the same order)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def row_range(rows: int, world: int, rank: int) -> tuple[int, int]:
    """The rows [begin, end) of an n-row tensor that rank `rank` of `world` holds under Shard(0)."""
    chunk = math.ceil(rows / world) if rows else 0
    begin = min(rows, rank * chunk)
    return begin, min(rows, begin + chunk)


def _layout(tensor) -> tuple[int, int]:
    """(rank, world) of a sharded tensor's mesh, checked to be genloom's one layout: Shard(0) on a 1-D mesh."""
    from torch.distributed.tensor import Shard

    mesh, placements = tensor.device_mesh, tensor.placements
    if mesh.ndim != 1 or len(placements) != 1 or placements[0] != Shard(0):
        raise ValueError(f"a sharded tensor with placements {placements} on a {mesh.ndim}-D mesh; genloom shards "
                         "along dim 0 on a 1-D mesh only")
    return mesh.get_local_rank(), mesh.size()


def local_rows(tensor) -> tuple[torch.Tensor, int]:
    """A sharded tensor's own rows (the local tensor) and the global row where they begin."""
    rank, world = _layout(tensor)
    local = tensor.to_local()
    begin, end = row_range(tensor.shape[0], world, rank)
    if local.shape[0] != end - begin:
        raise ValueError(f"a shard of {local.shape[0]} rows where Shard(0) gives rank {rank} rows {begin}..{end}")
    return local, begin


def rows_as_shard(rows: torch.Tensor, like) -> torch.Tensor:
    """This rank's `rows` of a tensor sharded like `like`, as a DTensor of `like`'s shape, dtype and device."""
    from torch.distributed.tensor import DTensor

    local = rows.to(device=like.to_local().device, dtype=like.dtype).contiguous()
    return DTensor.from_local(local, like.device_mesh, like.placements, run_check=False, shape=like.shape,
                              stride=like.stride())


def shard_rows_like(full: torch.Tensor, like) -> torch.Tensor:
    """`full` (the whole tensor, the same on every rank) split the way `like` is: this rank's rows as a DTensor."""
    rank, world = _layout(like)
    begin, end = row_range(full.shape[0], world, rank)
    return rows_as_shard(full[begin:end], like)


# -- the choice --------------------------------------------------------------------------------------------
def choose_parallel(preference: str, world_size: int, ddp_bytes: int, available: int | None) -> tuple[str, str]:
    """("none" | "ddp" | "fsdp", why). `ddp_bytes`: what one rank needs holding the whole model (weights,
    gradients, optimizer state, activations); `available`: the device memory one rank may use (None: unknown)."""
    from ..core.memory import gigabytes

    if preference not in PARALLEL_CHOICES:
        raise ConfigError(f"train.parallel: expected one of {', '.join(PARALLEL_CHOICES)}, got {preference!r}")
    if world_size <= 1:
        if preference == "fsdp":
            raise ConfigError("train.parallel=fsdp shards the model over the processes of a torchrun job, and this "
                              "run has one process: start it with torchrun --nproc-per-node N -m genloom train ..., "
                              "or set train.parallel=auto")
        return "none", "one process"
    if preference != "auto":
        return preference, f"train.parallel={preference}"
    if available is None or ddp_bytes <= available:
        shown = "unknown" if available is None else gigabytes(available)
        return "ddp", f"auto: a whole copy needs about {gigabytes(ddp_bytes)} per process, {shown} available"
    return "fsdp", (f"auto: a whole copy needs about {gigabytes(ddp_bytes)} per process, more than the "
                    f"{gigabytes(available)} available, so the model is sharded over {world_size} processes")


# -- units -------------------------------------------------------------------------------------------------
def _list_members(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for index, child in enumerate(module):
        path = f"{name}.{index}" if name else str(index)
        out += _list_members(path, child) if isinstance(child, nn.ModuleList) else [(path, child)]
    return out


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's blocks: the members of its `nn.ModuleList`s (entering lists of lists), outermost lists only."""
    found: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not any(name.startswith(p + ".") for p in inside):
            found += [(n, m) for n, m in _list_members(name, module) if any(True for _ in m.parameters())]
            inside.append(name)
    return found


def _owns_its_parameters(model: nn.Module, name: str, module: nn.Module) -> bool:
    """Whether no parameter of `module` is shared with a module outside it (a tied embedding is not)."""
    mine = {id(p) for p in module.parameters()}
    for owner, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in mine and not owner.startswith(name + "."):
            return False
    return True


def shard_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that become FSDP units, deepest first (see the module docstring); the root comes last."""
    candidates = dict(blocks(model))
    for name, child in model.named_children():     # networks of their own, with their own blocks (a GAN's two)
        if not isinstance(child, nn.ModuleList) and any(isinstance(m, nn.ModuleList) for m in child.modules()):
            candidates.setdefault(name, child)
    units = [(n, m) for n, m in candidates.items() if _owns_its_parameters(model, n, m)]
    return sorted(units, key=lambda item: -item[0].count("."))


def apply_fsdp(model: nn.Module, device: torch.device, dtype: torch.dtype | None, reshard_after_forward: bool,
               offload: bool) -> nn.Module:
    """Shard `model` in place over every rank of the process group (FSDP2): its units, then the root.
    `dtype` bf16: the gathered weights are bf16 for the forward and backward passes, gradients are reduced
    in fp32 and the sharded weights the optimizer updates stay fp32. `offload`: the sharded weights,
    gradients and optimizer state live in CPU memory, copied to the GPU for each unit's turn."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    if offload and device.type != "cuda":
        raise ConfigError("train.fsdp_offload keeps the sharded state in CPU memory, off the GPU; this run trains "
                          "on the CPU already (set train.fsdp_offload=false)")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    options: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if dtype is not None:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    if offload:
        options["offload_policy"] = CPUOffloadPolicy()
    with torch.no_grad():          # FSDP2 splits plain row-major storage (not channels-last convolution weights)
        for parameter in model.parameters():
            if not parameter.is_contiguous():
                parameter.data = parameter.data.contiguous()
    for _, unit in shard_units(model):
        fully_shard(unit, **options)
    fully_shard(model, **options)
    return model


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def keep_gathered(model: nn.Module):
    """Inside, a backward pass leaves FSDP's gathered weights in place: for a gradient taken within a loss
    (`torch.autograd.grad(..., create_graph=True)`, e.g. the GAN's R1 penalty), whose graph the loss's own
    backward pass goes through again. Outside FSDP it does nothing."""
    modules = fsdp_modules(model)
    for module in modules:
        module.set_reshard_after_backward(False, recurse=False)
    try:
        yield
    finally:
        for module in modules:
            module.set_reshard_after_backward(True, recurse=False)


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """FSDP's `no_sync`: with `sync` False the next backward keeps unsharded gradients to add to, instead of
    reduce-scattering them (gradient accumulation)."""
    model.set_requires_gradient_sync(sync)


# -- activation checkpointing ------------------------------------------------------------------------------
def _checkpointed(forward):
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():          # evaluation and sampling: nothing to keep or recompute
            return forward(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each block's forward in the backward pass instead of keeping its activations (the block's
    parameter names stay the same). Returns the number of blocks; refuses a model without blocks."""
    found = blocks(model)
    if not found:
        raise ConfigError(f"train.activation_checkpointing: {type(model).__name__} has no blocks (nn.ModuleList "
                          "members) to checkpoint; set train.activation_checkpointing=false")
    for _, block in found:
        block.forward = _checkpointed(block.forward)
    return len(found)
