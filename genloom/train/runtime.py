"""Where training runs: process group (torchrun), device, and numeric precision."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..core.machine import bf16_is_faster, cpu_has_amx, machine_profile

__all__ = ["Runtime", "setup_runtime", "choose_precision", "cpu_has_amx", "autocast"]

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False        # this runtime joined the process group (and leaves it in `close`)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over the ranks (one flat all-reduce)."""
        if not self.distributed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup_runtime(device: str = "auto", timeout: float = 600.0) -> Runtime:
    """Join the process group when started by torchrun (WORLD_SIZE > 1) and pick this rank's device.
    `timeout`: seconds a collective waits for the other processes (a rank that died) before failing."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and world_size > 1:
        device = f"cuda:{local_rank}"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            from ..core.errors import ConfigError
            raise ConfigError(f"train.device={device}: CUDA is not available on this machine; use cpu or auto")
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout))
        owns = True
        if dev.type == "cpu":
            # Share the cores between the local processes instead of oversubscribing them.
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, owns_group=owns)


def choose_precision(preference: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training, or None for fp32.

    `auto` picks bf16 where the machine's probe (`core.machine`, measured once per machine and kept in the
    cache) found bf16 matmuls at least 1.25x faster than fp32: CUDA GPUs with bf16 and CPUs with AMX. CPUs
    with only AVX512-BF16 run bf16 matmuls *slower* than fp32 through PyTorch (measured: about 0.5-0.7x),
    so there `auto` stays in fp32. Because the probe's answer is kept, every run on a machine decides the
    same way; in a distributed run each process reads the same answer for the same hardware.
    """
    if preference == "fp32":
        return None
    if preference == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return None
    profile = machine_profile(device)
    if not profile.get("fp32_gflops"):     # the probe failed (and said so): today's rule
        return torch.bfloat16 if device.type == "cuda" or cpu_has_amx() else None
    return torch.bfloat16 if bf16_is_faster(profile) else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
