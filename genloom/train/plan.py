"""How much memory a run needs per process under DDP and FSDP, before anything is allocated (`genloom plan`).

Counted on PyTorch's meta device (shapes only): the parameters of the model the recipe builds, and the
activations of one micro-batch: the forward pass runs on meta tensors and autograd's saved-tensor hooks count
what it keeps for the backward pass (each storage once, parameters excluded), also per block for activation
checkpointing. Per process, with P
parameters (all trainable), N processes and one micro-batch:

| part | DDP | FSDP |
|---|---|---|
| weights (fp32) | 4P | 4P / N |
| gradients (fp32) | 4P, and DDP's gradient buckets 4P | 4P / N |
| optimizer state | AdamW 8P; Muon 4 per hidden-matrix entry + 8 per other | the same / N |
| EMA copy (train.ema_decay > 0) | 4P | 4P / N |
| gathered weights and their gradients | - | the root's parameters (embeddings, norms) whole, and two blocks (the running one and the prefetched next), weights (2 bytes in bf16, else 4) + fp32 gradients |
| activations | what autograd saves for the backward pass + two gradient buffers of the largest saved tensor | the same |
| activations, checkpointed | each block's input + what is saved outside the blocks + the largest block's + the two buffers | the same |
| optimizer step temporaries (Muon) | 4 per parameter + 24 per entry of the largest stack of same-shaped matrices | 4 per parameter / N + 24 per entry of the largest stack of at most 8 (gathered) |

The peak is the state (weights, gradients, buckets, optimizer state, EMA, gathered weights) plus the larger
of the activations (forward and backward) and the optimizer step's temporaries (activations are freed by then).

The formula is checked against the peak of live tensor memory measured in small runs
(`tests/train/test_plan.py`; method and figures in BENCHMARKS.md). What it leaves out: the CUDA context
(~0.5-1 GB per GPU), allocator fragmentation, communication buffers (NCCL), the data itself.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .memory import meta_batch, meta_model
from .optim import SHARDED_BATCH, parameter_groups
from .parallel import blocks, is_sharded, shard_units

__all__ = ["SIZES", "ActivationProfile", "activation_profile", "MemoryPlan", "plan_memory", "LiveTensorMemory"]

# Llama-style sizes for `genloom plan --size`: (d_model, n_layer, n_head, n_kv_head, mlp_hidden, vocab_size).
SIZES = {
    "1B": (2048, 16, 32, 8, 8192, 128256),      # the shape of Llama 3.2 1B
    "7B": (4096, 32, 32, 32, 11008, 32000),     # Llama 2 7B
    "70B": (8192, 80, 64, 8, 28672, 32000),     # Llama 2 70B
}


def size_overrides(size: str) -> list[str]:
    d, layers, heads, kv, hidden, vocab = SIZES[size]
    return [f"model.d_model={d}", f"model.n_layer={layers}", f"model.n_head={heads}", f"model.n_kv_head={kv}",
            f"model.mlp_hidden={hidden}", f"model.vocab_size={vocab}", "model.mlp=swiglu", "model.norm=rmsnorm",
            "model.position=rope", "model.bias=false", "model.tie_embeddings=false"]


@dataclasses.dataclass(frozen=True)
class ActivationProfile:
    saved: int            # bytes autograd keeps for the backward pass of one micro-batch (parameters excluded)
    outside: int          # ... of them saved outside the blocks
    largest_block: int    # ... saved inside the block that saves most
    block_inputs: int     # bytes of the blocks' inputs (what checkpointing keeps of each block)
    largest_tensor: int   # the largest one saved (its gradient is the largest transient buffer)

    @property
    def kept(self) -> int:
        """The backward pass's peak: everything saved, plus two gradient buffers of the largest saved size."""
        return self.saved + 2 * self.largest_tensor

    @property
    def kept_checkpointed(self) -> int:
        """Checkpointed: the blocks' inputs, what is saved outside them, and one block recomputed at a time (never
        more than without checkpointing)."""
        return min(self.kept, self.block_inputs + self.outside + self.largest_block + 2 * self.largest_tensor)


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


class _FusedAttention(TorchFunctionMode):
    """On meta tensors, `scaled_dot_product_attention` runs its math fallback, which keeps the (T x T) attention
    weights for the backward pass; real runs use a fused kernel that keeps only the output and a log-sum-exp
    per row. This counts attention as the fused kernel runs it (where its arguments allow)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
            given = {**dict(zip(names, args)), **kwargs}
            q, k, v = given["query"], given["key"], given["value"]
            if q.dim() == 4 and k.shape[1] == q.shape[1] and not given.get("enable_gqa"):
                try:
                    out, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                        q, k, v, given.get("dropout_p", 0.0), given.get("is_causal", False),
                        attn_mask=given.get("attn_mask"), scale=given.get("scale"))
                    return out
                except Exception:
                    pass
        return func(*args, **kwargs)


def activation_profile(model: nn.Module, objective, example: Any, micro_batch: int,
                       dtype: torch.dtype | None = None) -> ActivationProfile | None:
    """What one micro-batch's forward pass saves for the backward pass, counted on meta tensors with autograd's
    saved-tensor hooks (each storage once, parameters excluded), in total and per block (None if the objective
    cannot run on meta tensors). `dtype`: the run's autocast dtype (None: fp32)."""
    found = blocks(model)
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: set[int] = set()
    per_block = [0] * len(found)
    counts = {"saved": 0, "outside": 0, "inputs": 0, "largest": 0}
    current: list[int] = []

    def pack(tensor):
        key = tensor.untyped_storage()._cdata
        if key not in weights and key not in seen:
            seen.add(key)
            size = tensor.untyped_storage().nbytes()
            counts["saved"] += size
            counts["largest"] = max(counts["largest"], size)
            if current:
                per_block[current[-1]] += size
            else:
                counts["outside"] += size
        return tensor

    def enter(index):
        def hook(module, args):
            current.append(index)
            counts["inputs"] += _nbytes(args[:1])
        return hook

    def leave(module, args, output):
        current.pop()

    model.train()
    hooks = [b.register_forward_pre_hook(enter(i)) for i, (_, b) in enumerate(found)]
    hooks += [b.register_forward_hook(leave) for _, b in found]
    try:
        batch = meta_batch(example, micro_batch)
        profiles = []
        for phase in objective.phases:          # one phase's graph at a time (a GAN's two): the larger counts
            counts.update(saved=0, outside=0, inputs=0, largest=0)
            per_block[:] = [0] * len(found)
            seen.clear()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), _FusedAttention(), \
                    (torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)):
                objective.loss(phase, model, batch)
            profiles.append(ActivationProfile(counts["saved"], counts["outside"], max(per_block, default=0),
                                              counts["inputs"], counts["largest"]))
    except Exception:
        return None
    finally:
        for hook in hooks:
            hook.remove()
    return max(profiles, key=lambda profile: profile.kept)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    parameters: int
    processes: int
    micro_batch: int
    rows: dict[str, dict[str, int]]       # {"ddp" | "fsdp": {part: bytes per process}}
    activations: ActivationProfile | None

    def total(self, parallel: str, checkpointing: bool) -> int:
        """The peak: the state, plus the larger of the activations (forward and backward passes) and the
        optimizer step's temporaries (the activations are freed by then)."""
        row = self.rows[parallel]
        state = sum(v for k, v in row.items() if not k.startswith("activations") and k != "optimizer step temporaries")
        return state + max(row["activations (checkpointed)" if checkpointing else "activations"],
                           row["optimizer step temporaries"])

    def to_json(self) -> dict:
        return {"parameters": self.parameters, "processes": self.processes, "micro_batch": self.micro_batch,
                "bytes_per_process": self.rows,
                "totals": {f"{p}{'+checkpointing' if c else ''}": self.total(p, c)
                           for p in self.rows for c in (False, True)}}


def plan_memory(config, build_model: Callable[[], nn.Module], build_objective: Callable[[], Any], example: Any,
                processes: int, micro_batch: int, dtype: torch.dtype | None = None) -> MemoryPlan:
    """The memory per process of training `config` on `processes` processes (see the module docstring)."""
    with torch.random.fork_rng(devices=[]):
        model = meta_model(build_model)
        if model is None:
            raise ValueError("the model cannot be built on the meta device")
        profile = activation_profile(model, build_objective(), example, micro_batch, dtype)
    t = config.train
    parameters = sum(p.numel() for p in model.parameters())
    n = max(1, processes)
    if t.optimizer == "muon":
        matrices = parameter_groups(model, list(model.parameters()))["hidden"]
        hidden = sum(p.numel() for p in matrices)
        optimizer = 4 * hidden + 8 * (parameters - hidden)
        by_shape: dict[tuple[int, ...], int] = {}
        for p in matrices:
            by_shape[tuple(p.shape)] = by_shape.get(tuple(p.shape), 0) + p.numel()
        counts: dict[tuple[int, ...], int] = {}
        for p in matrices:
            counts[tuple(p.shape)] = counts.get(tuple(p.shape), 0) + 1
        group = max(by_shape.values(), default=0)
        sharded_group = max((math.prod(shape) * min(count, SHARDED_BATCH) for shape, count in counts.items()), default=0)
        # the Nesterov updates and AdamW's denominators (sharded), and ~6 whole copies of the largest same-shape
        # stack of matrices in the Newton-Schulz iteration (the stack, its iterates, the previous result)
        temporaries = {"ddp": 4 * parameters + 24 * group,
                       "fsdp": -(-4 * parameters // n) + 24 * (sharded_group if processes > 1 else group)}
    else:
        optimizer = 8 * parameters
        temporaries = {"ddp": 0, "fsdp": 0}        # torch's AdamW updates in place
    ema = 4 * parameters if t.ema_decay > 0 else 0
    weight_bytes = 2 if dtype is not None else 4
    units = shard_units(model)
    in_units = {id(p) for _, unit in units for p in unit.parameters()}
    root = sum(p.numel() for p in model.parameters() if id(p) not in in_units)
    largest = max((sum(p.numel() for p in unit.parameters()) for name, unit in units if name in dict(blocks(model))),
                  default=0)
    kept = profile.kept if profile else 0
    kept_checkpointed = profile.kept_checkpointed if profile else 0
    rows = {
        "ddp": {"weights": 4 * parameters, "gradients": 4 * parameters,
                "gradient buckets": 4 * parameters if processes > 1 else 0, "optimizer state": optimizer,
                "EMA copy": ema, "gathered weights": 0, "optimizer step temporaries": temporaries["ddp"], "activations": kept,
                "activations (checkpointed)": kept_checkpointed},
        "fsdp": {"weights": -(-4 * parameters // n), "gradients": -(-4 * parameters // n), "gradient buckets": 0,
                 "optimizer state": -(-optimizer // n), "EMA copy": -(-ema // n),
                 "gathered weights": (root + 2 * largest) * (weight_bytes + 4) if processes > 1 else 0,
                 "optimizer step temporaries": temporaries["fsdp"], "activations": kept, "activations (checkpointed)": kept_checkpointed},
    }
    return MemoryPlan(parameters, processes, micro_batch, rows, profile)


class LiveTensorMemory(TorchDispatchMode):
    """Measures the peak of live tensor memory while it is active: every tensor an operator returns (forward,
    backward, optimizer, collectives) is counted by its storage until the last tensor on that storage is
    freed (and every tensor `copy.deepcopy` makes, which copies storages without an operator). Tensors made
    before it started are not counted. What checks `plan_memory` against real runs."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}       # storage address -> [bytes, tensors on it]
        self.now = 0
        self.peak = 0

    def _release(self, address: int) -> None:
        entry = self.live.get(address)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[address]

    def _track(self, tensor: torch.Tensor) -> None:
        try:
            storage = tensor.untyped_storage()
            address, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):        # storage-less tensors (FSDP's freed buffers, fakes)
            return
        if not address or not size:
            return
        entry = self.live.get(address)
        if entry is None:
            entry = self.live[address] = [size, 0]
            self.now += size
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        weakref.finalize(tensor, self._release, address)

    def __enter__(self):
        # copy.deepcopy (an EMA copy of a model) copies storages without an operator: count those too
        self._deepcopies = {cls: cls.__deepcopy__ for cls in (torch.Tensor, nn.Parameter)}
        for cls, original in self._deepcopies.items():
            def counted(tensor, memo, original=original):
                result = original(tensor, memo)
                if isinstance(result, torch.Tensor) and result.device.type == "cpu" and not is_sharded(result):
                    self._track(result)
                return result
            cls.__deepcopy__ = counted
        return super().__enter__()

    def __exit__(self, *exc):
        for cls, original in self._deepcopies.items():
            cls.__deepcopy__ = original
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor) and value.device.type == "cpu" and not is_sharded(value):
                self._track(value)
        return out
