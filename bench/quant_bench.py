"""Weight-only quantization benchmark: kernels, decoding speed and perplexity, fp32 / bf16 / int8 / int4.

    python bench/quant_bench.py                           # everything (~15 min on 2 cores)
    python bench/quant_bench.py --only kernels            # one part: kernels, decode, quality
    python bench/quant_bench.py --only quality --checkpoint runs/shakes

kernels: each candidate kernel for int8 and int4 on GPT-2-124M-sized matrices (768x768, 768x2304,
768x3072, 3072x768 and the 768x50257 head) at batch 1 and 8, against fp32 F.linear: the existing
torch._weight_int8pack_mm, torch's dynamic int8 quantisation (fbgemm), torchao where it runs on the CPU,
and torch's int4 kernel with bf16 or fp32 activations.
decode: tokens/s of greedy decoding, 256 new tokens at batch 1 and 8, GPT-2 124M with random weights:
genloom fp32 / bf16 / int8 / int4 against transformers' generate() in fp32.
quality: perplexity on the validation split of a trained text checkpoint (a 60-second shakespeare-char
run is trained when --checkpoint is not given), fp32 against int8 and int4.

Every ratio compares things measured in this same run, interleaved and repeated (medians), so noise
from a shared machine cancels. Results print as Markdown tables and are saved to bench/out/quant.json.

`decode_speed(model, batch, new_tokens, quantize)` is the function other benchmarks can import.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TINY_SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

GPT2_SHAPES = [(768, 768), (768, 2304), (768, 3072), (3072, 768), (768, 50257)]   # (in, out)
PRECISIONS = (None, "bf16", "int8", "int4", "int4-g32")                            # None = fp32


def _median_time(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------

def kernel_makers() -> dict:
    """{name: make(linear) -> fn(x fp32) -> y}, or {name: reason} where a kernel cannot be had here."""
    from genloom.nn.quantize import Int4Linear, Int8Linear

    def fp32(linear):
        weight = linear.weight.detach()
        return lambda x: F.linear(x, weight)

    def bf16(linear):
        weight = linear.weight.detach().to(torch.bfloat16)
        return lambda x: F.linear(x.to(torch.bfloat16), weight)

    def int8pack(linear):
        weight = linear.weight.detach()
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        codes = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        scale = scale.to(torch.bfloat16)
        return lambda x: torch._weight_int8pack_mm(x.to(torch.bfloat16), codes, scale)

    def dynamic(linear):
        return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)

    def int4_fp32(linear):
        int4 = Int4Linear(linear)
        packed, group, scales, n = int4.weight, int4.group, int4.scales_and_zeros.float(), int4.out_features
        return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x.contiguous(), packed, group, scales)[:, :n]

    makers = {"fp32 F.linear": fp32, "bf16 F.linear": bf16,
              "int8 _weight_int8pack_mm (bf16 x)": int8pack, "int8 quantize_dynamic (fbgemm, per-tensor)": dynamic,
              "int8 genloom Int8Linear (fbgemm, per-row)": Int8Linear,
              "int4 _weight_int4pack_mm_for_cpu (bf16 x)": Int4Linear,
              "int4 _weight_int4pack_mm_for_cpu (fp32 x)": int4_fp32}
    makers.update(_torchao_makers())
    return makers


def _torchao_makers() -> dict:
    try:
        warnings.filterwarnings("ignore")
        logging.disable(logging.WARNING)
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup
    except Exception as e:  # noqa: BLE001 - reported in the table
        return {"torchao": f"does not import: {type(e).__name__}: {e}"[:120]}
    finally:
        logging.disable(logging.NOTSET)
    out: dict = {}
    for name, config, dtype in [
            ("int8 torchao Int8WeightOnlyConfig (bf16 x)", Int8WeightOnlyConfig(), torch.bfloat16),
            ("int8 torchao Int8WeightOnlyConfig (fp32 x)", Int8WeightOnlyConfig(), torch.float32),
            ("int4 torchao Int4WeightOnlyConfig (bf16 x)", Int4WeightOnlyConfig(group_size=128), torch.bfloat16),
            ("int4 torchao IntxWeightOnlyConfig int4 (fp32 x)",
             IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(128)), torch.float32)]:
        def make(linear, config=config, dtype=dtype):
            module = torch.nn.Sequential(linear).to(dtype)
            quantize_(module, config)
            return lambda x: module(x.to(dtype))
        try:
            with torch.no_grad():
                make(torch.nn.Linear(256, 256, bias=False))(torch.randn(1, 256))
        except Exception as e:  # noqa: BLE001 - reported in the table
            out[name] = f"does not run on this CPU: {type(e).__name__}: {str(e).splitlines()[0]}"[:120]
            continue
        out[name] = make
    return out


def bench_kernels(batches=(1, 8), repeats: int = 5, shapes=GPT2_SHAPES, resident_mb: int = 400) -> list[dict]:
    """Time per call of each kernel. Each is given enough copies of the matrix (different random weights)
    to hold `resident_mb` MB in fp32 (GPT-2 124M's linear weights and head: ~500 MB), called in turn, so
    that, as in decoding, the weights come from memory rather than from the cache (one 768x768 fp32
    matrix, 2.4 MB, would stay in the L3 cache; 400 MB of fp32 is 50 MB in int4)."""
    makers = kernel_makers()
    rows = []
    for in_features, out_features in shapes:
        copies = max(1, round(resident_mb * 1e6 / (in_features * out_features * 4)))
        torch.manual_seed(0)
        linears = [torch.nn.Linear(in_features, out_features, bias=False).eval() for _ in range(copies)]
        kernels = {k: [make(copy.deepcopy(lin)) for lin in linears] for k, make in makers.items() if callable(make)}
        for batch in batches:
            x = torch.randn(batch, in_features)
            calls = max(2, copies) * max(1, 8 // copies)
            times: dict = {k: [] for k in kernels}

            def sweep(fns, calls=calls, x=x):
                for i in range(calls):
                    fns[i % len(fns)](x)

            with torch.no_grad():
                for fns in kernels.values():
                    sweep(fns)
                for _ in range(repeats):                                     # interleaved
                    for k, fns in kernels.items():
                        times[k].append(_median_time(lambda fns=fns: sweep(fns), 1) / calls)
            base = statistics.median(times["fp32 F.linear"])
            for k, make in makers.items():
                row = {"matrix": f"{in_features}x{out_features}", "batch": batch, "kernel": k}
                if not callable(make):
                    rows.append({**row, "us": "", "vs_fp32": "", "note": make})
                    continue
                t = statistics.median(times[k])
                rows.append({**row, "us": round(t * 1e6, 1), "vs_fp32": round(t / base, 3), "note": ""})
            print(f"  kernels {in_features}x{out_features} batch {batch}: " + ", ".join(
                f"{k} {statistics.median(v) * 1e6:.0f}us" for k, v in times.items()), flush=True)
        del kernels, linears
    return rows


def kernel_summary(rows: list[dict]) -> list[dict]:
    """Per format and batch: each kernel's time against the chosen one (geometric mean over the matrices)."""
    import math

    chosen = {"int8": "int8 genloom Int8Linear (fbgemm, per-row)", "int4": "int4 _weight_int4pack_mm_for_cpu (bf16 x)"}
    out = []
    for fmt, best in chosen.items():
        for batch in sorted({r["batch"] for r in rows}):
            at = {(r["matrix"], r["kernel"]): r for r in rows if r["batch"] == batch and r["us"] != ""}
            for kernel in sorted({k for _, k in at if k.startswith(fmt)}):
                ratios = [at[(m, kernel)]["us"] / at[(m, best)]["us"] for m, k in at if k == kernel and (m, best) in at]
                vs_fp32 = [at[(m, kernel)]["vs_fp32"] for m, k in at if k == kernel]
                out.append({"format": fmt, "batch": batch, "kernel": kernel, "chosen": kernel == best,
                            "time_vs_chosen_geomean": round(math.exp(statistics.mean(map(math.log, ratios))), 2),
                            "time_vs_chosen_range": f"{min(ratios):.2f}-{max(ratios):.2f}",
                            "time_vs_fp32_geomean": round(math.exp(statistics.mean(map(math.log, vs_fp32))), 3)})
    return out


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------

_VARIANTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def precision_variant(model, quantize: str | None):
    """A copy of `model` in `quantize` precision (None = the model itself, "bf16", "int8", "int4"),
    made once per model and precision."""
    from genloom.nn.quantize import quantize as quantize_model
    from genloom.nn.quantize import quantize_int4

    if quantize is None:
        return model
    variants = _VARIANTS.setdefault(model, {})
    if quantize not in variants:
        twin = copy.deepcopy(model).eval()
        if quantize == "bf16":
            variants[quantize] = twin.to(torch.bfloat16)
        elif quantize.startswith("int4-g"):
            variants[quantize] = quantize_int4(twin, int(quantize[len("int4-g"):]))
        else:
            variants[quantize] = quantize_model(twin, quantize)
    return variants[quantize]


def decode_speed(model, batch: int = 1, new_tokens: int = 256, quantize: str | None = None,
                 prompt_len: int = 16, warmup: bool = True) -> float:
    """Tokens/s of greedy decoding (genloom's KV-cache loop) of `batch` random prompts of `prompt_len`
    tokens, `new_tokens` each (fewer if the context is shorter). `quantize`: None (the model as it is),
    "bf16", "int8", "int4" or "int4-gG" (int4 in groups of G); the converted copy is made once per model
    and reused on the next call."""
    from genloom.lm.decoding import Sampling, generate_tokens

    variant = precision_variant(model, quantize)
    new = min(new_tokens, model.config.block_size - prompt_len)
    prompts = torch.randint(0, model.config.vocab_size, (batch, prompt_len),
                            generator=torch.Generator().manual_seed(batch)).tolist()

    def run(count):
        for _ in generate_tokens(variant, prompts, count, [None] * batch, Sampling(temperature=0)):
            pass

    with torch.no_grad():
        if warmup:
            run(4)
        start = time.perf_counter()
        run(new)
        return batch * new / (time.perf_counter() - start)


def hf_decode_speed(hf_model, batch: int = 1, new_tokens: int = 256, prompt_len: int = 16, vocab: int = 50257,
                    warmup: bool = True) -> float:
    """Tokens/s of transformers' greedy generate() on the same kind of prompts as `decode_speed`."""
    prompts = torch.randint(0, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(batch))

    def run(count):
        hf_model.generate(prompts, max_new_tokens=count, min_new_tokens=count, do_sample=False, pad_token_id=0,
                          attention_mask=torch.ones_like(prompts))

    with torch.no_grad():
        if warmup:
            run(4)
        start = time.perf_counter()
        run(new_tokens)
        return batch * new_tokens / (time.perf_counter() - start)


def gpt2_pair():
    """transformers' GPT-2 124M with random weights, and the same weights as a genloom Transformer."""
    import transformers

    from genloom.lm.hf import from_hf
    from genloom.lm.transformer import Transformer

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    config, state = from_hf(hf.config.to_dict(), hf.state_dict())
    ours = Transformer(config).eval()
    ours.load_state_dict(state)
    return hf, ours


def weights_read_per_step(model) -> int:
    """Bytes of weights one decoding step reads: every parameter and buffer except the embedding tables
    (one row a token), plus the token embedding again where it is the (tied) output head."""
    from genloom.nn.quantize import Int8Linear

    lookups = {id(model.embed.weight)} | ({id(model.pos_embed.weight)} if model.pos_embed is not None else set())
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())
                if id(t) not in lookups)
    # fbgemm's packed int8 weights are not buffers: one byte a weight, an fp32 scale a row
    total += sum(m.in_features * m.out_features + 4 * m.out_features for m in model.modules()
                 if isinstance(m, Int8Linear) and m.packed is not None)
    return total + (model.embed.weight.numel() * model.embed.weight.element_size() if model.head is None else 0)


def bench_decoding(new_tokens: int = 256, batches=(1, 8), repeats: int = 3) -> list[dict]:
    hf, model = gpt2_pair()
    weight_bytes = {q: weights_read_per_step(precision_variant(model, q)) for q in PRECISIONS}
    rows = []
    for batch in batches:
        speeds: dict = {"transformers fp32": []}
        speeds.update({f"genloom {q or 'fp32'}": [] for q in PRECISIONS})
        for _ in range(repeats):                                          # interleaved
            speeds["transformers fp32"].append(hf_decode_speed(hf, batch, new_tokens))
            for q in PRECISIONS:
                speeds[f"genloom {q or 'fp32'}"].append(decode_speed(model, batch, new_tokens, q))
        hf_speed = statistics.median(speeds["transformers fp32"])
        for name, values in speeds.items():
            q = None if name.endswith("fp32") else name.split()[-1]
            rows.append({"batch": batch, "new_tokens": new_tokens, "model": name, "tok_s": round(statistics.median(values), 1),
                         "vs_transformers": round(statistics.median(values) / hf_speed, 2),
                         "weight_MB_read_per_step": "" if name.startswith("transformers")
                         else round(weight_bytes[q] / 1e6, 1)})
        print(f"  decode batch {batch}: " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in speeds.items())
              + " tok/s", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# Quality
# ----------------------------------------------------------------------------------------------

def perplexity(checkpoint: Path, quantize: str | None) -> float:
    """Validation-split perplexity of a text checkpoint, loaded with `quantize` (`genloom eval --quantize`
    does the same); "int4-gG" is int4 in groups of G."""
    import genloom
    from genloom.nn.quantize import quantize_int4

    if quantize is not None and quantize.startswith("int4-g"):
        handle = genloom.load(checkpoint, device="cpu")
        quantize_int4(handle.model, int(quantize[len("int4-g"):]))
    else:
        handle = genloom.load(checkpoint, device="cpu", quantize=quantize)
    return genloom.evaluate(handle, progress=False).perplexity


def bench_quality(checkpoint: Path | None, work: Path, seconds: int = 60) -> list[dict]:
    if checkpoint is None:
        if not TINY_SHAKESPEARE.is_file():
            sys.exit(f"{TINY_SHAKESPEARE} is missing: train a checkpoint or pass --checkpoint")
        checkpoint = work / "shakes"
        subprocess.run([sys.executable, "-m", "genloom", "train", "shakespeare-char", "--set",
                        f"data.path={TINY_SHAKESPEARE}", "--max-time", str(seconds), "--out", str(checkpoint)],
                       check=True, stdout=subprocess.DEVNULL)
    fp32 = perplexity(checkpoint, None)
    rows = [{"checkpoint": str(checkpoint), "weights": "fp32", "perplexity": round(fp32, 4), "change_pct": 0.0}]
    for q in ("int8", "int4", "int4-g64", "int4-g32"):
        ppl = perplexity(checkpoint, q)
        rows.append({"checkpoint": str(checkpoint), "weights": q, "perplexity": round(ppl, 4),
                     "change_pct": round(100 * (ppl / fp32 - 1), 2)})
        print(f"  quality {q}: perplexity {ppl:.4f} against fp32 {fp32:.4f}", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    out = []
    for section, rows in results.items():
        if not isinstance(rows, list) or not rows:
            continue
        columns = list(rows[0])
        out += [f"### {section}\n", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        out += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["kernels", "decode", "quality"], action="append",
                        help="run only these parts (repeatable)")
    parser.add_argument("--checkpoint", type=Path, help="quality: a trained text checkpoint (default: train one)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = args.only or ["kernels", "decode", "quality"]
    results: dict = {"machine": [{"torch": torch.__version__, "threads": torch.get_num_threads()}]}
    if "kernels" in parts:
        results["kernels"] = bench_kernels()
        results["kernel choice"] = kernel_summary(results["kernels"])
    if "decode" in parts:
        results["decoding"] = bench_decoding(args.new_tokens)
    if "quality" in parts:
        results["quality"] = bench_quality(args.checkpoint, Path(tempfile.mkdtemp(prefix="genloom-quant-")))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quant.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
