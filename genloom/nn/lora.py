"""Low-rank adapters (LoRA, Hu et al. 2021) for linear layers and convolutions.

A frozen weight W gets a trainable update scale * B A, with A (r, in) random and B (out, r) zero at
the start, so an adapted model begins exactly as its base. Only A and B train: a few thousand numbers
per layer instead of the whole matrix, and an adapter file a few percent of the model's size.

One layer can hold several named adapters. Which one applies is a routing choice made per call:
`use_adapter(model, "name")` for the whole batch, `use_adapter(model, ["a", None, "b"])` for each
row of a batch (one base model serving many small adapters at once), `None` for the base alone.
`merge_adapter` folds an adapter into the weights: the merged layer computes the same function
without the adapter's extra matmuls.

Adapted layers keep their base parameters under the same names (`blocks.0.attn.qkv.weight`) and
add `lora_a.NAME` / `lora_b.NAME`, so base checkpoints load into adapted models unchanged.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError

__all__ = ["LoRALinear", "LoRAConv2d", "add_adapter", "use_adapter", "route_rows", "adapters_off", "adapter_names",
           "adapter_tensors", "load_adapter_tensors", "merge_adapter", "remove_adapter", "lora_modules",
           "weights_fingerprint", "base_tensors"]

Route = "str | Sequence[str | None] | None"


class _LoRAMixin:
    """What LoRALinear and LoRAConv2d share: the adapters, their scales and the routing."""

    def _init_adapters(self) -> None:
        self.lora_a = nn.ParameterDict()
        self.lora_b = nn.ParameterDict()
        self.lora_scale: dict[str, float] = {}
        self.lora_dropout = nn.ModuleDict()
        self.route: str | tuple[str | None, ...] | None = None

    def add(self, name: str, rank: int, alpha: float, dropout: float) -> None:
        """A new adapter: A (rank, *weight.shape[1:]) initialised as nn.Linear/Conv2d initialise their weights,
        B (out, rank) zero, so the layer starts unchanged."""
        weight = self.weight
        a = torch.empty(rank, *weight.shape[1:], device=weight.device, dtype=weight.dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_a[name] = nn.Parameter(a)
        self.lora_b[name] = nn.Parameter(torch.zeros(weight.shape[0], rank, device=weight.device, dtype=weight.dtype))
        self.lora_scale[name] = alpha / rank
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _delta(self, x: torch.Tensor, name: str) -> torch.Tensor:
        raise NotImplementedError

    def _adapted(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        route = self.route            # an adapter this layer does not have leaves the layer as it is
        if route is None:
            return y
        if isinstance(route, str):
            return y + self._delta(x, route) if route in self.lora_a else y
        if len(route) != x.shape[0]:
            raise ValueError(f"adapter routing names {len(route)} rows but the batch has {x.shape[0]}")
        out = y.clone()
        for name in {r for r in route if r is not None and r in self.lora_a}:
            rows = torch.tensor([i for i, r in enumerate(route) if r == name], device=x.device)
            out[rows] = out[rows] + self._delta(x[rows], name)
        return out


class LoRALinear(nn.Linear, _LoRAMixin):
    """nn.Linear with low-rank adapters: y = x W^T + b + scale * dropout(x) A^T B^T."""

    @classmethod
    def wrap(cls, linear: nn.Linear) -> "LoRALinear":
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer._init_adapters()
        return layer

    def _delta(self, x: torch.Tensor, name: str) -> torch.Tensor:
        h = F.linear(self.lora_dropout[name](x), self.lora_a[name])
        return F.linear(h, self.lora_b[name]) * self.lora_scale[name]

    def update(self, name: str) -> torch.Tensor:
        """The adapter's change to the weight matrix: scale * B A, shaped like W."""
        return (self.lora_b[name] @ self.lora_a[name]) * self.lora_scale[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._adapted(x, F.linear(x, self.weight, self.bias))


class LoRAConv2d(nn.Conv2d, _LoRAMixin):
    """nn.Conv2d with low-rank adapters: A is a convolution to `rank` channels with the layer's kernel,
    stride and padding, B a 1x1 convolution back to the output channels."""

    @classmethod
    def wrap(cls, conv: nn.Conv2d) -> "LoRAConv2d":
        if conv.groups != 1:
            raise ConfigError("finetune.lora_targets: LoRA applies to ungrouped convolutions only "
                              f"(a layer has groups={conv.groups})")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        for attribute in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                          "transposed", "output_padding", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(layer, attribute, getattr(conv, attribute))
        layer.weight = conv.weight
        layer.bias = conv.bias
        layer._init_adapters()
        return layer

    def _delta(self, x: torch.Tensor, name: str) -> torch.Tensor:
        h = F.conv2d(self.lora_dropout[name](x), self.lora_a[name], None, self.stride, self.padding, self.dilation)
        return F.conv2d(h, self.lora_b[name][:, :, None, None]) * self.lora_scale[name]

    def update(self, name: str) -> torch.Tensor:
        return torch.einsum("or,rikl->oikl", self.lora_b[name], self.lora_a[name]) * self.lora_scale[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._adapted(x, self._conv_forward(x, self.weight, self.bias))


LORA_TYPES = (LoRALinear, LoRAConv2d)


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear | LoRAConv2d]]:
    for name, module in model.named_modules():
        if isinstance(module, LORA_TYPES):
            yield name, module


def _set_child(model: nn.Module, dotted: str, child: nn.Module) -> None:
    parent_name, _, attribute = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, child)


def add_adapter(model: nn.Module, name: str, targets: Sequence[str], rank: int, alpha: float,
                dropout: float = 0.0) -> list[str]:
    """Give every linear layer (and 2-D convolution) whose module name matches one of the `targets`
    patterns (fnmatch, e.g. "*.attn.qkv") a new adapter `name`; return the adapted module names."""
    if rank < 1:
        raise ConfigError(f"finetune.lora_rank: must be at least 1, got {rank}")
    chosen = []
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for module_name, module in candidates:
        if not any(fnmatch.fnmatchcase(module_name, pattern) for pattern in targets):
            continue
        if not isinstance(module, LORA_TYPES):
            if type(module) is nn.Linear:
                module = LoRALinear.wrap(module)
            elif type(module) is nn.Conv2d:
                module = LoRAConv2d.wrap(module)
            else:
                continue
            _set_child(model, module_name, module)
        if name in module.lora_a:
            raise ConfigError(f"the model already has an adapter named {name!r} on {module_name}")
        module.add(name, rank, alpha, dropout)
        chosen.append(module_name)
    if not chosen:
        shown = ", ".join(n for n, _ in candidates[:12]) + (" ..." if len(candidates) > 12 else "")
        raise ConfigError(f"finetune.lora_targets {list(targets)} match no linear or convolution layer; "
                          f"the model's layers are named like: {shown}")
    return chosen


def adapter_names(model: nn.Module) -> list[str]:
    names: list[str] = []
    for _, module in lora_modules(model):
        names += [n for n in module.lora_a if n not in names]
    return names


def use_adapter(model: nn.Module, route) -> None:
    """Route every adapted layer: a name (whole batch), a list with a name or None per row, or None (base)."""
    known = adapter_names(model)
    wanted = [route] if isinstance(route, str) else list(route or [])
    for name in wanted:
        if name is not None and name not in known:
            raise KeyError(f"no adapter named {name!r} is loaded (loaded: {', '.join(known) or 'none'})")
    value = route if route is None or isinstance(route, str) else tuple(route)
    for _, module in lora_modules(model):
        module.route = value


def route_rows(model: nn.Module, names: Sequence[str | None]) -> None:
    """Route each batch row to its adapter (names already checked); one shared name is routed as a whole."""
    value = names[0] if len(set(names)) == 1 else tuple(names)
    for _, module in lora_modules(model):
        module.route = value


@contextlib.contextmanager
def adapters_off(model: nn.Module):
    """Run the base model alone inside the block (DPO's reference model, before/after comparisons)."""
    saved = [(module, module.route) for _, module in lora_modules(model)]
    for module, _ in saved:
        module.route = None
    try:
        yield
    finally:
        for module, route in saved:
            module.route = route


def adapter_tensors(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors, keyed `<module>.lora_a` / `<module>.lora_b` (independent of its name)."""
    out = {}
    for module_name, module in lora_modules(model):
        if name in module.lora_a:
            out[f"{module_name}.lora_a"] = module.lora_a[name]
            out[f"{module_name}.lora_b"] = module.lora_b[name]
    return out


def load_adapter_tensors(model: nn.Module, name: str, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy saved adapter tensors into the adapter `name` (which `add_adapter` created), checking shapes."""
    expected = adapter_tensors(model, name)
    problems = [f"missing {k}" for k in expected if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k.endswith((".lora_a", ".lora_b")) and k not in expected]
    problems += [f"{k}: file has {tuple(tensors[k].shape)}, the model expects {tuple(v.shape)}"
                 for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if problems:
        raise ConfigError(f"{source} does not fit this model: " + "; ".join(problems[:5]))
    with torch.no_grad():
        for key, parameter in expected.items():
            parameter.copy_(tensors[key])


@torch.no_grad()
def merge_adapter(model: nn.Module, name: str) -> int:
    """Fold adapter `name` into the weights and remove it; layers left with no adapter become plain
    nn.Linear / nn.Conv2d again. Returns how many layers changed."""
    changed = 0
    for module_name, module in list(lora_modules(model)):
        if name not in module.lora_a:
            continue
        module.weight.add_(module.update(name).to(module.weight.dtype))
        del module.lora_a[name], module.lora_b[name], module.lora_dropout[name]
        module.lora_scale.pop(name)
        if isinstance(module.route, str) and module.route == name:
            module.route = None
        changed += 1
        if not len(module.lora_a):
            if isinstance(module, LoRALinear):
                plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                  device="meta")
            else:
                plain = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                                  module.padding, module.dilation, bias=module.bias is not None, device="meta")
            plain.weight, plain.bias = module.weight, module.bias
            _set_child(model, module_name, plain)
    return changed


def remove_adapter(model: nn.Module, name: str) -> int:
    """Take adapter `name` out of every layer that has it (each keeps its base weights and other adapters, and a
    route that still names it leaves those rows as the base computes them); returns how many layers changed."""
    changed = 0
    for _, module in lora_modules(model):
        if name in module.lora_a:
            del module.lora_a[name], module.lora_b[name], module.lora_dropout[name]
            module.lora_scale.pop(name)
            if module.route == name:
                module.route = None
            changed += 1
    return changed


def base_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without its adapters' tensors: what `weights_fingerprint` of the base reads."""
    return {k: v for k, v in model.state_dict().items() if ".lora_a." not in k and ".lora_b." not in k}


def weights_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """A short hash of a model's weights that tells one base model from another cheaply: every tensor's
    name and shape, and a strided sample of its values (so a fine-tuned copy differs from its base)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach()
        flat = value.reshape(-1)
        step = max(1, flat.numel() // 64)
        sample = flat[::step][:64].float().cpu().numpy().round(6)
        h.update(f"{key}:{tuple(value.shape)}:".encode())
        h.update(sample.tobytes())
    return h.hexdigest()[:16]
