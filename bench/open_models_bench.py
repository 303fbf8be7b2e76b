"""Open models: import time and peak memory of a ~500M-parameter Llama-shaped bf16 checkpoint in shards, and
decoding tokens/s of a ~135M SmolLM-shaped model, genloom against transformers at batch 1 and 8.

    python bench/open_models_bench.py [--work DIR] [--skip-import] [--skip-decode] [--tokens 32]

The checkpoints are random (built on the meta device, then filled tensor by tensor, saved by transformers'
save_pretrained in bf16 shards of 200 MB), so nothing is downloaded. Import and load each run in a fresh
subprocess that reports its peak resident memory (VmHWM from /proc/self/status) and its resident memory just
before the work started (the interpreter, torch and genloom), so the figure is what the work itself needed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_500M = dict(vocab_size=32000, hidden_size=1280, intermediate_size=3456, num_hidden_layers=24,
                  num_attention_heads=20, num_key_value_heads=4, max_position_embeddings=2048,
                  tie_word_embeddings=False)
SMOLLM_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                   tie_word_embeddings=True, rope_theta=100000.0)


def tokenizer_files(folder: Path) -> None:
    from genloom.lm.tokenizers import TextTokenizer

    TextTokenizer.train_bpe(["the quick brown fox jumps over the lazy dog " * 50], 400).save(folder / "tokenizer.json")


def make_model(folder: Path, shape: dict, dtype) -> int:
    """A random transformers Llama of `shape` saved in `folder`; returns its parameter count."""
    import torch
    import transformers

    config = transformers.LlamaConfig(**shape)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(dtype)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    model.save_pretrained(folder, max_shard_size="200MB")
    tokenizer_files(folder)
    return sum(p.numel() for p in model.parameters())


CHILD = r"""
import json, sys, time, resource
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
import torch, genloom
from genloom.text.convert import import_hf
import genloom.api, genloom.text.handle                  # the code both paths import, before the baseline
from genloom.core.machine import machine_profile
machine_profile("cpu")                                   # the (cached) precision probe load consults
before = rss("VmRSS:")
start = time.perf_counter()
what, src, out = sys.argv[1:4]
if what == "import":
    import_hf(src, out)
else:
    model = genloom.load(out, device="cpu", verify=False)
    dtype = str(next(model.model.parameters()).dtype)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_before": before, "peak": rss("VmHWM:"),
                  "dtype": dtype if what == "load" else None}))
"""


def child(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise SystemExit(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_import(work: Path) -> dict:
    import torch

    hf = work / "llama-500m"
    if not (hf / "config.json").is_file():
        t = time.perf_counter()
        params = make_model(hf, LLAMA_500M, torch.bfloat16)
        print(f"made {params / 1e6:.0f}M parameters in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    size = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
    out = work / "llama-500m-genloom"
    if out.exists():
        import shutil
        shutil.rmtree(out)
    imported = child("import", str(hf), str(out))
    loaded = child("load", str(hf), str(out))
    gib = 1 << 30
    row = {"weights_gib": size / gib, "import_s": imported["seconds"], "import_peak_gib": imported["peak"] / gib,
           "import_extra_gib": (imported["peak"] - imported["rss_before"]) / gib,
           "load_s": loaded["seconds"], "load_dtype": loaded["dtype"], "load_peak_gib": loaded["peak"] / gib,
           "load_extra_gib": (loaded["peak"] - loaded["rss_before"]) / gib}
    in_memory = size * (1 if loaded["dtype"] == "torch.bfloat16" else 2)
    row["import_extra_vs_size"] = (imported["peak"] - imported["rss_before"]) / size
    row["load_extra_vs_model_in_memory"] = (loaded["peak"] - loaded["rss_before"]) / in_memory
    return row


def bench_decode(work: Path, tokens: int) -> dict:
    import torch
    import transformers

    import genloom
    from genloom.text.convert import import_hf

    hf = work / "smollm-135m"
    if not (hf / "config.json").is_file():
        make_model(hf, SMOLLM_135M, torch.float32)
    out = work / "smollm-135m-genloom"
    if not (out / "model.safetensors").is_file():
        import_hf(hf, out)
    ours = genloom.load(out, device="cpu")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    prompt = list(range(5, 21))
    rows = {}
    for batch in (1, 8):
        ids = torch.tensor([prompt] * batch)
        with torch.no_grad():
            theirs.generate(ids, max_new_tokens=2, do_sample=False)
            t = time.perf_counter()
            theirs.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, eos_token_id=None,
                            pad_token_id=0)
            hf_rate = batch * tokens / (time.perf_counter() - t)
        from genloom.lm.decoding import Sampling, generate_tokens

        def run(n):
            generators = [torch.Generator().manual_seed(i) for i in range(batch)]
            for _ in generate_tokens(ours.model, [prompt] * batch, n, generators, Sampling(0.0), True, None):
                pass
        run(2)
        t = time.perf_counter()
        run(tokens)
        ours_rate = batch * tokens / (time.perf_counter() - t)
        rows[f"batch_{batch}"] = {"genloom_tok_s": ours_rate, "transformers_tok_s": hf_rate,
                                  "ratio": ours_rate / hf_rate}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--skip-import", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="genloom-open-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report = {}
    if not args.skip_import:
        report["import_500m"] = bench_import(work)
    if not args.skip_decode:
        report["decode_135m"] = bench_decode(work, args.tokens)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
