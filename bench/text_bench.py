"""Text-model benchmark: training speed, quality at a fixed budget and decoding speed, side by side.

    python bench/text_bench.py                      # everything except the 15-minute run (~12 min)
    python bench/text_bench.py --long               # also the 15-minute quality run
    python bench/text_bench.py --only decode        # one part: peaks, train, quality, ablation, decode

Every ratio compares two things measured in this same run, so that noise from a shared machine
cancels. Results are printed as Markdown tables and saved to bench/out/text.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
TINY_SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


# ----------------------------------------------------------------------------------------------
# The machine: matmul peak and memory bandwidth
# ----------------------------------------------------------------------------------------------

def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matmul."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        best = max(best, 3 * 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Best GB/s of summing a large fp32 array (reads every byte once)."""
    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return best


# ----------------------------------------------------------------------------------------------
# Training throughput: genloom's trainer against a plain fp32 loop of the same model
# ----------------------------------------------------------------------------------------------

def plain_loop_tokens_per_second(model_config, batch: int, steps: int) -> float:
    """The way nanoGPT trains on a CPU: eager fp32, torch.optim.AdamW, no compile."""
    from genloom.lm.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    T, V = model_config.block_size, model_config.vocab_size
    x, y = torch.randint(0, V, (batch, T)), torch.randint(0, V, (batch, T))

    def step():
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * T * steps / (time.perf_counter() - start)


def genloom_tokens_per_second(overrides: list[str], steps: int, out: Path) -> tuple[float, object]:
    """Steady-state tokens/s of `genloom train` (windows after the first, which holds any compile)."""
    from genloom import api
    from genloom.train.metrics import MetricsLog

    window = max(1, steps // 6)
    api.train("shakespeare-char", out=out, overrides=[
        f"data.path={TINY_SHAKESPEARE}", f"train.max_steps={steps}", f"train.log_interval={window}",
        f"train.eval_interval={steps * 10}", "train.sample_length=0", "train.progress=false", *overrides])
    rows = [r for r in MetricsLog.read(out / "metrics.csv") if r["tokens_per_s"]]
    from genloom.core.config import RunConfig
    config = RunConfig.from_json_file(out / "config.json")
    return statistics.median(float(r["tokens_per_s"]) for r in rows[1:]), config


def bench_training(peaks: dict, work: Path) -> list[dict]:
    from genloom.lm.transformer import Transformer

    cases = [
        ("quickstart model (shakespeare-char)", [], 120),
        ("~10M parameters (6 x 384, block 256)", ["model.n_layer=6", "model.n_head=6", "model.d_model=384",
                                                  "model.block_size=256", "train.batch_size=8"], 30),
    ]
    rows = []
    for name, overrides, steps in cases:
        ours, config = genloom_tokens_per_second(overrides, steps, work / f"train-{len(rows)}")
        adamw, _ = genloom_tokens_per_second(overrides + ["train.optimizer=adamw"], steps, work / f"train-a{len(rows)}")
        model_config = config.model
        plain = plain_loop_tokens_per_second(model_config, config.train.batch_size, max(10, steps // 4))
        model = Transformer(model_config)
        flops = model.flops_per_token()
        rows.append({
            "model": name, "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "batch": f"{config.train.batch_size} x {model_config.block_size}",
            "plain_fp32_tok_s": round(plain),
            "genloom_recipe_tok_s": round(ours), "recipe_speedup": round(ours / plain, 2),
            "genloom_adamw_tok_s": round(adamw), "adamw_speedup": round(adamw / plain, 2),
            "MFU_vs_fp32_peak": round(max(ours, adamw) * flops / 1e9 / peaks["fp32_gflops"], 3),
            "MFU_vs_bf16_peak": round(max(ours, adamw) * flops / 1e9 / peaks["bf16_gflops"], 3),
            "genloom_settings": f"compile={config.train.compile}, precision={config.train.precision}, "
                                f"optimizer={config.train.optimizer}",
        })
        print(f"  train {name}: plain {plain:,.0f} tok/s, genloom {ours:,.0f} tok/s (AdamW {adamw:,.0f})", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# Quality at a fixed wall-clock budget, exactly as a user runs it
# ----------------------------------------------------------------------------------------------

def bench_quality(budget: float, work: Path, extra: list[str] = ()) -> dict:
    out = work / f"quality-{int(budget)}" if not extra else work
    sets = [x for o in [f"data.path={TINY_SHAKESPEARE}", "train.progress=false", *extra] for x in ("--set", o)]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "genloom", "train", "shakespeare-char", *sets, "--max-time", str(budget),
                    "--out", str(out)], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    result = subprocess.run([sys.executable, "-m", "genloom", "eval", "--checkpoint", str(out), "--data",
                             str(TINY_SHAKESPEARE)], check=True, capture_output=True, text=True)
    values = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    state = json.loads((out / "train_state.json").read_text())
    row = {"budget_s": budget, "train_wall_s": round(wall, 1), "steps": state["step"], "tokens": state["tokens"],
           "val_loss": float(values["loss"].split()[0]), "checkpoint": str(out), "overrides": list(extra)}
    print(f"  quality {budget:.0f} s {extra}: val loss {row['val_loss']:.4f} ({row['steps']} steps)", flush=True)
    return row


# Each row adds one change to the row above; the last row is the built-in recipe as it ships.
ABLATION = [
    ("GPT-2 style (learned positions, LayerNorm, GELU, tied), AdamW, batch 32 (nanoGPT-like)",
     ["model.position=learned", "model.norm=layernorm", "model.mlp=gelu_tanh", "model.tie_embeddings=true",
      "model.bias=true", "train.optimizer=adamw", "train.batch_size=32", "train.compile=false"]),
    ("+ batch 16 (more, smaller steps)",
     ["model.position=learned", "model.norm=layernorm", "model.mlp=gelu_tanh", "model.tie_embeddings=true",
      "model.bias=true", "train.optimizer=adamw", "train.compile=false"]),
    ("+ RoPE, RMSNorm, ReLU², QK-norm, untied head, no biases",
     ["train.optimizer=adamw", "train.compile=false"]),
    ("+ Muon for hidden matrices", ["train.compile=false"]),
    ("+ torch.compile (= the shakespeare-char recipe)", []),
    # Not cumulative: the recipe with bf16 autocast forced on. precision=auto turns it on only where the
    # same-run peaks say bf16 matmuls are faster (CUDA, or a CPU with AMX).
    ("recipe, but bf16 autocast forced on (train.precision=bf16)", ["train.precision=bf16"]),
]


def bench_ablation(work: Path) -> list[dict]:
    rows = []
    for name, overrides in ABLATION:
        row = bench_quality(107, work / f"ablation-{len(rows)}", overrides)
        rows.append({"change": name, "steps": row["steps"], "val_loss_107s": row["val_loss"]})
    return rows


# ----------------------------------------------------------------------------------------------
# Decoding speed: genloom against transformers' generate() on the same weights
# ----------------------------------------------------------------------------------------------

def _time_tokens(fn, tokens: int) -> float:
    start = time.perf_counter()
    fn()
    return tokens / (time.perf_counter() - start)


def bench_decoding(bandwidth: float, quickstart_checkpoint: Path | None, new_tokens: int = 256) -> list[dict]:
    import transformers

    from genloom.lm.decoding import Sampling, generate_tokens
    from genloom.lm.hf import from_hf, to_hf
    from genloom.lm.transformer import Transformer

    transformers.logging.set_verbosity_error()
    pairs = []
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()   # 124M, random weights
    config, state = from_hf(gpt2.config.to_dict(), gpt2.state_dict())
    ours = Transformer(config).eval()
    ours.load_state_dict(state)
    pairs.append(("GPT-2 124M (random weights)", gpt2, ours))
    if quickstart_checkpoint is not None:
        from genloom import load

        handle = load(quickstart_checkpoint)
        try:
            hf_config, hf_state = to_hf(handle.model.config, handle.model.state_dict())
        except Exception as e:  # noqa: BLE001 - reported in the table
            # Same size and shape in Llama style (the closest Hugging Face architecture), random weights.
            print(f"  quickstart model has no Hugging Face equivalent ({e}); using a Llama-style twin")
            c = handle.model.config
            torch.manual_seed(0)
            hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
                vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=4 * c.d_model,
                num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.kv_heads,
                # RoPE has no hard length limit: give the twin room for prompt + all new tokens.
                max_position_embeddings=max(c.block_size, 16 + new_tokens), tie_word_embeddings=False)).eval()
            twin_config, twin_state = from_hf(hf.config.to_dict(), hf.state_dict())
            twin = Transformer(twin_config).eval()
            twin.load_state_dict(twin_state)
            pairs.append(("quickstart-sized Llama twin (random weights)", hf, twin))
        else:
            cls = transformers.GPT2LMHeadModel if hf_config["model_type"] == "gpt2" else transformers.LlamaForCausalLM
            hf = cls(transformers.AutoConfig.for_model(**hf_config)).eval()
            hf.load_state_dict(hf_state, strict=False)
            if hf_config.get("tie_word_embeddings"):
                hf.tie_weights()
            pairs.append(("quickstart model", hf, handle.model))

    import copy

    from genloom.nn.quantize import quantize_int8

    rows = []
    for name, hf, model in pairs:
        int8_model = quantize_int8(copy.deepcopy(model))
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        prompt_len = 16
        vocab = model.config.vocab_size
        new = min(new_tokens, model.config.block_size - prompt_len)
        for batch in (1, 8):
            prompts = torch.randint(0, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(batch))
            with torch.no_grad():
                def run_hf():
                    hf.generate(prompts, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                pad_token_id=0, attention_mask=torch.ones_like(prompts))

                def run_ours(m=model):
                    for _ in generate_tokens(m, prompts.tolist(), new, [None] * batch, Sampling(temperature=0)):
                        pass

                run_hf(), run_ours(), run_ours(int8_model)  # warm up
                hf_speed = max(_time_tokens(run_hf, batch * new) for _ in range(2))
                our_speed = max(_time_tokens(run_ours, batch * new) for _ in range(2))
                int8_speed = max(_time_tokens(lambda: run_ours(int8_model), batch * new) for _ in range(2))
            bound = bandwidth * 1e9 / weight_bytes * batch   # every step reads all weights once
            rows.append({"model": name, "batch": batch, "new_tokens": new, "transformers_tok_s": round(hf_speed, 1),
                         "genloom_fp32_tok_s": round(our_speed, 1), "fp32_speedup": round(our_speed / hf_speed, 2),
                         "fp32_bandwidth_bound_tok_s": round(bound, 1),
                         "fp32_fraction_of_bound": round(our_speed / bound, 3),
                         "genloom_int8_tok_s": round(int8_speed, 1), "int8_speedup": round(int8_speed / hf_speed, 2)})
            print(f"  decode {name} batch {batch}: transformers {hf_speed:.1f}, genloom {our_speed:.1f} "
                  f"(int8 {int8_speed:.1f}) tok/s (fp32 bound {bound:.1f})", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_length(run: Path) -> dict:
    """{"steps", "train_seconds"} of a finished run, from the last row of its metrics.csv."""
    rows = (Path(run) / "metrics.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    return {"steps": int(last[header.index("step")]), "train_seconds": float(last[header.index("time_s")])}


def markdown(results: dict) -> str:
    out = []
    for section, rows in results.items():
        if not isinstance(rows, list) or not rows:
            continue
        columns = list(rows[0])
        out.append(f"### {section}\n")
        out.append("| " + " | ".join(columns) + " |")
        out.append("|" + "---|" * len(columns))
        for row in rows:
            out.append("| " + " | ".join(str(row[c]) for c in columns) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["peaks", "train", "quality", "ablation", "decode"], action="append",
                        help="run only these parts (repeatable)")
    parser.add_argument("--long", action="store_true", help="also train for 15 minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    parts = set(args.only or ["peaks", "train", "quality", "ablation", "decode"])
    if not TINY_SHAKESPEARE.is_file():
        sys.exit(f"{TINY_SHAKESPEARE} is missing: the benchmark uses the standard Tiny Shakespeare file")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="genloom-bench-"))
    os.environ.setdefault("GENLOOM_CACHE", str(work / "cache"))

    results: dict = {"machine": [{
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}]}
    print("measuring peaks", flush=True)
    peaks = {"fp32_gflops": round(matmul_peak(torch.float32), 1), "bf16_gflops": round(matmul_peak(torch.bfloat16), 1),
             "read_GB_s": round(read_bandwidth(), 1)}
    results["peaks"] = [peaks]
    print(f"  {peaks}", flush=True)
    quickstart = None
    if "train" in parts:
        results["training throughput"] = bench_training(peaks, work)
    if "quality" in parts:
        results["quality at a fixed budget"] = [bench_quality(107, work)]
        quickstart = Path(results["quality at a fixed budget"][0]["checkpoint"])
        if args.long:
            results["quality at a fixed budget"].append(bench_quality(900, work))
    if "ablation" in parts:
        results["ablation (107 s each)"] = bench_ablation(work)
    if "decode" in parts:
        results["decoding"] = bench_decoding(peaks["read_GB_s"], quickstart)
    (args.out / "text.json").write_text(json.dumps(results, indent=2))
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
