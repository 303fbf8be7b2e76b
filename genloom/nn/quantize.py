"""Weight-only int8 and int4 quantization for fast decoding on CPUs.

Decoding one token at a time reads every weight once per step, so its speed is set by memory
bandwidth. Training never uses these layers; they replace the linear layers of an eval-mode model.

- int8: one int8 per weight and one scale per output row (absmax / 127): 4x fewer weight bytes than
  fp32 (the "q8_0"-style trade llama.cpp makes).
- int4: two weights per byte, in groups of `group_size` consecutive inputs (32, 64, 128 or 256) that
  each carry a bf16 scale and zero point: with the default group of 128 that is 4.25 bits a weight,
  about 7.5x fewer bytes than fp32. Each weight is within scale / 2 of its original value.

Kernels, measured side by side (bench/quant_bench.py: a shared 2-core AMD EPYC with AVX512-VNNI/BF16,
no AMX, torch 2.13; the GPT-2-124M matrices 768x768, 768x2304, 768x3072, 3072x768 and the 768x50257
head, with 400 MB of fp32 copies cycled so the weights come from memory; geometric means):
- int8 uses fbgemm's dynamic int8 linear (`torch.ops.quantized.linear_dynamic`, activations rounded to
  8 bits per call, VNNI dot products). `torch._weight_int8pack_mm` with bf16 activations took 1.43x /
  1.91x its time at batch 1 / 8 on one thread, 0.99x (0.73-1.20) / 1.62x on two; `quantize_dynamic`'s
  per-tensor weights 1.07-1.17x; torchao 0.18's Int8WeightOnlyConfig 4.3-9.4x. The int8pack kernel is
  kept where fbgemm is missing (CUDA, MPS, other CPUs' builds).
- int4 uses `torch.ops.aten._weight_int4pack_mm_for_cpu` with bf16 activations and scales: fp32
  activations took 26-107x its time (a slow path), torchao's IntxWeightOnlyConfig (one byte a weight)
  8-28x, and torchao's Int4WeightOnlyConfig does not run on a CPU (it needs mslk, or CUDA for its tile
  layout). Against int8: 0.94-1.11x int8's time at batch 1 on one thread, 0.70-0.87x on two, but
  1.5-2.0x at batch 8 (it dequantises to bf16 and multiplies in floating point): int4 is the smaller,
  int8 the faster under batching.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "INT4_GROUP_SIZE",
    "INT4_GROUP_SIZES",
    "QUANTIZE_CHOICES",
    "Int4Linear",
    "Int8Linear",
    "check_quantize",
    "int4_available",
    "int8_available",
    "quantize",
    "quantize_int4",
    "quantize_int8",
]

QUANTIZE_CHOICES = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)   # what the int4 kernel accepts
INT4_GROUP_SIZE = 128                   # the default: 4.25 bits a weight (scale and zero point in bf16 per group)
_N_MULTIPLE = 16                        # the int4 kernel packs output rows in blocks of 16


def int8_available() -> bool:
    return _fbgemm_ready() or hasattr(torch, "_weight_int8pack_mm")


def int4_available() -> bool:
    return all(hasattr(torch.ops.aten, name) for name in ("_weight_int4pack_mm_for_cpu",
                                                         "_convert_weight_to_int4pack_for_cpu"))


def check_quantize(value: str | None) -> str | None:
    """`value` if it names a quantization (or is None), else the one-line error naming the choices."""
    if value is None or value in QUANTIZE_CHOICES:
        return value
    from ..core.errors import GenloomError
    raise GenloomError(f"quantize {value!r}: the choices are int8 (weights as int8, 4x fewer bytes than fp32) "
                       f"and int4 (weights as 4-bit groups of {INT4_GROUP_SIZE}, about 7.5x fewer bytes)")


def _fbgemm_ready() -> bool:
    """Whether torch's x86 quantized engine (fbgemm) can run int8 linears here."""
    return torch.backends.quantized.engine in ("x86", "fbgemm") and hasattr(torch.ops.quantized, "linear_dynamic")


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 rows and per-row scales (absmax / 127).

    On x86 CPUs the product is fbgemm's dynamic int8 linear (torch.ops.quantized.linear_dynamic): the
    activations are also rounded to 8 bits, per call, and multiplied with VNNI integer dot products (as
    fast as `torch._weight_int8pack_mm` with bf16 activations at batch 1 on two threads, 1.4-1.9x faster
    otherwise; see the module's docstring), which remains the path elsewhere (CUDA, MPS, no fbgemm).
    On CPUs without VNNI the activations get 7 bits, as torch's dynamic quantization does, to stay clear
    of the 16-bit saturation of the older instructions.
    """

    def __init__(self, linear: nn.Linear | None = None, weight: torch.Tensor | None = None):
        super().__init__()
        weight = (linear.weight if linear is not None else weight).detach().float()
        bias = linear.bias if linear is not None else None
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0                 # (out,)
        codes = torch.round(weight / scale[:, None]).clamp(-127, 127)
        self.packed = None
        if weight.device.type == "cpu" and _fbgemm_ready():
            import warnings

            with warnings.catch_warnings():      # torch 2.13 warns that quantized tensors are deprecated
                warnings.simplefilter("ignore")
                qweight = torch._make_per_channel_quantized_tensor(codes.to(torch.int8), scale.double(),
                                                                  torch.zeros_like(scale, dtype=torch.long), 0)
                self.packed = torch.ops.quantized.linear_prepack(
                    qweight, bias.detach().float().clone() if bias is not None else None)
            self.reduce_range = not getattr(torch.cpu, "_is_vnni_supported", lambda: False)()
            return
        self.register_buffer("weight", codes.to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.register_buffer("bias", bias.detach().float().clone() if bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if self.packed is not None:
            flat = x.reshape(-1, shape[-1]).float().contiguous()
            y = torch.ops.quantized.linear_dynamic(flat, self.packed, self.reduce_range).to(x.dtype)
            return y.reshape(*shape[:-1], self.out_features)
        flat = x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()            # (M, in)
        y = torch._weight_int8pack_mm(flat, self.weight, self.scale).to(x.dtype)   # (M, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kernel = "fbgemm" if self.packed is not None else "int8pack_mm"
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={kernel}"


def int4_group_size(in_features: int, group_size: int = INT4_GROUP_SIZE) -> tuple[int, int]:
    """(group, padded in_features) for a layer of `in_features` inputs: `group_size` where it divides
    in_features, else the largest smaller kernel group size that does (finer groups, no padding), else
    `group_size` with the inputs zero-padded up to a multiple of it (in_features not a multiple of 32)."""
    if group_size not in INT4_GROUP_SIZES:
        from ..core.errors import GenloomError
        raise GenloomError(f"int4 group size {group_size}: the int4 kernel takes groups of "
                           f"{', '.join(map(str, INT4_GROUP_SIZES))} inputs")
    for g in INT4_GROUP_SIZES[::-1]:
        if g <= group_size and in_features % g == 0:
            return g, in_features
    return group_size, -(-in_features // group_size) * group_size


def _round_up(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`values` (fp32) in `dtype`, rounded towards +infinity, so the stored value is never smaller."""
    rounded = values.to(dtype)
    return torch.where(rounded.float() < values, torch.nextafter(rounded, torch.full_like(rounded, float("inf"))),
                       rounded)


def int4_quantize(weight: torch.Tensor, group: int, dtype: torch.dtype = torch.bfloat16):
    """Group-wise asymmetric 4-bit codes of `weight` (out, in), in % group == 0.

    Returns (codes (out, in) int32 in 0..15, scales (out, in // group), zeros (out, in // group)), scales
    and zeros in `dtype`, with weight ~ (code - 8) * scale + zero (the kernel's convention). Per group of
    minimum m and maximum M: zero ~ m + 8 (M - m) / 15 (rounded to `dtype`), then the smallest `dtype`
    scale with m >= zero - 8 scale and M <= zero + 7 scale, so every weight of the group lies in the
    range the 16 codes span and rounding to the nearest code moves it by at most scale / 2.
    """
    out_features, in_features = weight.shape
    w = weight.detach().float().reshape(out_features, in_features // group, group)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    zero = (low + 8.0 * (high - low) / 15.0).to(dtype)
    z = zero.float()
    scale = _round_up(torch.maximum((z - low) / 8.0, (high - z) / 7.0).clamp_min(1e-10), dtype)
    codes = torch.round((w - z[..., None]) / scale.float()[..., None]) + 8.0
    codes = codes.clamp(0, 15).to(torch.int32).reshape(out_features, in_features)
    return codes, scale, zero


class Int4Linear(nn.Module):
    """y = x W^T (+ b) with W stored as 4-bit codes in groups of `group` inputs, each group with a bf16
    scale and zero point: W ~ (code - 8) * scale + zero, every element within scale / 2 of the original.

    The int4 kernel wants in_features a multiple of the group and out_features a multiple of 16: the
    group is chosen by `int4_group_size`, missing inputs are zero-padded (x too, at run time) and missing
    output rows are zero rows whose outputs are dropped.
    """

    def __init__(self, linear: nn.Linear | None = None, weight: torch.Tensor | None = None,
                 group_size: int = INT4_GROUP_SIZE):
        super().__init__()
        if not int4_available():
            from ..core.errors import GenloomError
            raise GenloomError(f"int4 decoding needs torch.ops.aten._weight_int4pack_mm_for_cpu, which torch "
                               f"{torch.__version__} lacks")
        weight = (linear.weight if linear is not None else weight).detach().float().cpu()
        self.out_features, self.in_features = weight.shape
        self.group, self.padded_in = int4_group_size(self.in_features, group_size)
        padded_out = -(-self.out_features // _N_MULTIPLE) * _N_MULTIPLE
        weight = F.pad(weight, (0, self.padded_in - self.in_features, 0, padded_out - self.out_features))
        codes, scale, zero = int4_quantize(weight, self.group)
        self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
        # (in // group, out, 2): the kernel's layout of the scales and zero points
        self.register_buffer("scales_and_zeros", torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous())
        bias = linear.bias if linear is not None else None
        self.register_buffer("bias", bias.detach().float().clone().cpu() if bias is not None else None)

    def dequantize(self) -> torch.Tensor:
        """The weights the layer multiplies by, (out, in) fp32 (for tests and error measurements)."""
        eye = torch.eye(self.padded_in, dtype=torch.bfloat16)
        unit = torch.tensor([1.0, 8.0], dtype=torch.bfloat16).expand_as(self.scales_and_zeros).contiguous()
        codes = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.weight, self.group, unit).float().t()
        scale = self.scales_and_zeros[..., 0].float().t().repeat_interleave(self.group, dim=1)
        zero = self.scales_and_zeros[..., 1].float().t().repeat_interleave(self.group, dim=1)
        return ((codes - 8.0) * scale + zero)[:self.out_features, :self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(torch.bfloat16)                            # (M, in)
        if self.padded_in != self.in_features:
            flat = F.pad(flat, (0, self.padded_in - self.in_features))
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat.contiguous(), self.weight, self.group,
                                                      self.scales_and_zeros)        # (M, out padded)
        y = y[:, :self.out_features].to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group={self.group}"


def _replace_linears(model: nn.Module, make) -> None:
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, make(child))
    if getattr(model, "head", "absent") is None and hasattr(model, "embed"):
        model.head = make(None, model.embed.weight)  # tied: quantize a copy for the output side


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear (and a tied output head) of an eval-mode model by int8 weights, in place."""
    if not int8_available():
        from ..core.errors import GenloomError
        raise GenloomError(f"int8 decoding needs torch._weight_int8pack_mm, which torch {torch.__version__} lacks")
    _replace_linears(model, lambda linear, weight=None: Int8Linear(linear, weight))
    model.quantized = "int8"
    return model


def quantize_int4(model: nn.Module, group_size: int = INT4_GROUP_SIZE) -> nn.Module:
    """Replace every nn.Linear (and a tied output head) of an eval-mode CPU model by group-wise int4
    weights, in place. The embedding stays in full precision (a lookup reads one row per token)."""
    int4_group_size(64, group_size)                         # refuse a group size the kernel lacks, up front
    param = next(model.parameters(), None)
    if param is not None and param.device.type != "cpu":
        from ..core.errors import GenloomError
        raise GenloomError(f"int4 decoding runs on the CPU (the model is on {param.device}); use --device cpu, "
                           "or int8")
    _replace_linears(model, lambda linear, weight=None: Int4Linear(linear, weight, group_size))
    model.quantized = "int4"
    return model


def quantize(model: nn.Module, kind: str | None) -> nn.Module:
    """`quantize_int8` or `quantize_int4` by name; None leaves the model as it is."""
    kind = check_quantize(kind)
    if kind == "int8":
        return quantize_int8(model)
    if kind == "int4":
        return quantize_int4(model)
    return model
