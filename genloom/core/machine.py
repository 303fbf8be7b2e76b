"""What this machine is and how fast it multiplies matrices: the start-up probe behind `precision=auto`
and the recipes' machine-dependent `[[budget]]` tiers.

CPUs differ more than their names suggest: with AMX (Intel Sapphire Rapids and later) bf16 matmuls run
several times faster than fp32; with only AVX512-BF16 (many AMD EPYC and older Xeons) PyTorch's bf16 GEMM
runs at about half the fp32 rate. A flag says what the CPU advertises, not what PyTorch makes of it, so
genloom times both precisions on a matrix product of a training-like shape (about a second in all) and
keeps the answer in its cache folder, keyed by the CPU, its flags, the torch version and the thread count:
every later run on the machine decides the same way without probing again. A probe that fails falls back
to fp32 and the recipe's plain tiers, and says so once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from typing import Any

import torch

from .cache import cache_folder
from .io import write_json_atomic

__all__ = ["machine_profile", "cpu_summary", "cpu_has_amx", "bf16_is_faster", "REFERENCE_GFLOPS"]

log = logging.getLogger(__name__)

PROBE_VERSION = 1
# The fp32 rate of the machine the built-in recipes were tuned on (2 cores of an AVX-512 Xeon, no AMX),
# for reading a profile's speed as "x times that machine".
REFERENCE_GFLOPS = 300.0
_SHAPE = (2048, 512, 512)     # (tokens, in, out): a batch of 16 x 128 tokens through a 512-wide layer
_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni", "avx2")
_warned: set[str] = set()
_memo: dict[str, dict[str, Any]] = {}


def _cpu() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    present = set(line.split(":", 1)[1].split())
                    flags = [flag for flag in _FLAGS if flag in present]
                if flags and model:
                    break
    except OSError:
        pass
    return model, flags


def cpu_has_amx() -> bool:
    """True when the CPU advertises AMX tiles for bf16 (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in _cpu()[1]


def cpu_summary() -> str:
    """`AMD EPYC (avx512_bf16, avx512_vnni; no AMX)`: the CPU and the flags that decide matmul speed."""
    model, flags = _cpu()
    amx = "AMX" if "amx_bf16" in flags else "no AMX"
    shown = [f for f in flags if f in ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni")]
    return f"{model} ({', '.join(shown + [amx])})"


def _rate(fn, flops: float, seconds: float) -> float:
    """GFLOP/s of `fn` (the best of repeated timings within `seconds`)."""
    fn()                                           # first call: allocation, kernel choice
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return flops / best / 1e9


def _measure(device: torch.device) -> dict[str, float]:
    m, k, n = _SHAPE
    flops = 2.0 * m * k * n
    out: dict[str, float] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def run() -> None:
            for _ in range(4):
                torch.mm(a, b)
            sync()
        out[f"{name}_gflops"] = round(_rate(run, 4 * flops, 0.4), 1)
    return out


def _key(device: torch.device) -> tuple[str, dict[str, Any]]:
    if device.type == "cuda":
        identity = {"device": "cuda", "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__}
    else:
        model, flags = _cpu()
        identity = {"device": "cpu", "cpu": model, "flags": flags, "torch": torch.__version__,
                    "threads": torch.get_num_threads()}
    digest = hashlib.sha256(json.dumps({**identity, "v": PROBE_VERSION}, sort_keys=True).encode()).hexdigest()[:16]
    return digest, identity


def machine_profile(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The machine's matmul rates, measured once per machine and kept in the cache:
    `{"device", "cpu" | "gpu", "flags", "threads", "torch", "fp32_gflops", "bf16_gflops", "speed"}`,
    where `speed` is the faster precision's rate over `REFERENCE_GFLOPS`. An empty measurement
    (`fp32_gflops` 0) means the probe failed; callers then keep their plain defaults."""
    device = torch.device(device)
    key, identity = _key(device)
    if key in _memo:
        return _memo[key]
    path = cache_folder("machine") / f"{key}.json"
    profile: dict[str, Any] | None = None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(saved, dict) and {k: saved.get(k) for k in identity} == identity and saved.get("fp32_gflops"):
            profile = saved
    except (OSError, ValueError):
        pass
    if profile is None:
        try:
            rates = _measure(device)
        except Exception as error:   # a probe must never stop a run: fall back to the plain choice
            if "probe" not in _warned:
                _warned.add("probe")
                log.warning("machine probe failed (%s: %s); using fp32 and the recipe's default tiers",
                            type(error).__name__, error)
            return {**identity, "fp32_gflops": 0.0, "bf16_gflops": 0.0, "speed": 1.0, "probe": "failed"}
        profile = {**identity, **rates, "measured": time.strftime("%Y-%m-%d")}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, profile)
        except OSError:
            pass   # a read-only cache costs a probe per run, nothing else
        if device.type == "cpu":
            log.info("machine probe: %s, %d threads: fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s (kept in %s)",
                     cpu_summary(), identity["threads"], rates["fp32_gflops"], rates["bf16_gflops"], path)
    best = max(profile["fp32_gflops"], profile["bf16_gflops"] if bf16_is_faster(profile) else 0.0)
    profile = {**profile, "speed": round(best / REFERENCE_GFLOPS, 2)}
    _memo[key] = profile
    return profile


def bf16_is_faster(profile: dict[str, Any]) -> bool:
    """True when bf16 matmuls measured at least 1.25x the fp32 rate (AMX CPUs, most GPUs)."""
    return bool(profile.get("fp32_gflops")) and profile.get("bf16_gflops", 0.0) >= 1.25 * profile["fp32_gflops"]
