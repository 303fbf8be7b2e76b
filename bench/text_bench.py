"""Text-model benchmark: cold starts, training speed, quality at a fixed budget and decoding speed, side by side.

    python bench/text_bench.py                      # everything except the 15-minute run (~45 min on 2 cores)
    python bench/text_bench.py --long               # also a 15-minute first run
    python bench/text_bench.py --only decode        # one part: coldstart, train, quality, ablation, decode
    python bench/text_bench.py --nanogpt ~/nanoGPT  # run nanoGPT's README CPU config in the same run

Every ratio compares two things measured in this same run, so that noise from a shared machine
cancels. Quality runs are first runs on a fresh machine (an empty genloom cache: no tokens, no probe, no
compiled code) unless the row says "warm". The decoding part needs the `bench` extra (`gguf`,
`llama-cpp-python`) for its llama.cpp columns. Results are printed as Markdown tables and saved to
bench/out/text.json.
"""

from __future__ import annotations

import argparse
import json
import os
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
    """Tokens/s of the plain fp32 loop against genloom's trainer: AdamW in fp32 and in bf16 autocast (the
    trainer's own speed), and the recipe as it ships (Muon, precision=auto)."""
    from genloom.lm.transformer import Transformer

    cases = [
        ("quickstart model (shakespeare-char)", [], 120),
        ("~10M parameters (6 x 384, block 256)", ["model.n_layer=6", "model.n_head=6", "model.d_model=384",
                                                  "model.block_size=256", "train.batch_size=8"], 30),
    ]
    rows = []
    for name, overrides, steps in cases:
        n = len(rows)
        ours, config = genloom_tokens_per_second(overrides, steps, work / f"train-{n}")
        fp32, _ = genloom_tokens_per_second(overrides + ["train.optimizer=adamw", "train.precision=fp32"], steps,
                                            work / f"train-f{n}")
        bf16, _ = genloom_tokens_per_second(overrides + ["train.optimizer=adamw", "train.precision=bf16"], steps,
                                            work / f"train-b{n}")
        model_config = config.model
        plain = plain_loop_tokens_per_second(model_config, config.train.batch_size, max(10, steps // 4))
        model = Transformer(model_config)
        flops = model.flops_per_token()
        best = max(ours, fp32, bf16)
        rows.append({
            "model": name, "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "batch": f"{config.train.batch_size} x {model_config.block_size}",
            "plain_fp32_tok_s": round(plain),
            "genloom_adamw_fp32_tok_s": round(fp32), "fp32_speedup": round(fp32 / plain, 2),
            "genloom_adamw_bf16_tok_s": round(bf16), "bf16_speedup": round(bf16 / plain, 2),
            "genloom_recipe_tok_s": round(ours), "recipe_speedup": round(ours / plain, 2),
            "MFU_vs_fp32_peak": round(best * flops / 1e9 / peaks["fp32_gflops"], 3),
            "MFU_vs_bf16_peak": round(best * flops / 1e9 / peaks["bf16_gflops"], 3),
            "recipe_settings": f"compile={config.train.compile}, precision={config.machine.get('precision')}, "
                               f"optimizer={config.train.optimizer}",
        })
        print(f"  train {name}: plain {plain:,.0f} tok/s, genloom AdamW fp32 {fp32:,.0f}, bf16 {bf16:,.0f}, "
              f"recipe {ours:,.0f}", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# Quality at a fixed wall-clock budget, exactly as a user runs it
# ----------------------------------------------------------------------------------------------

NANOGPT_RECORDED = {"val_loss": 1.886, "wall_s": 108.0,
                    "source": "nanoGPT README CPU config, 2000 iterations (issue 22's measurement, AMX Xeon)"}
NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]


def _env(cache: Path) -> dict:
    """The environment of a run whose caches (tokens, probe, compiled code) are all in `cache`."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["GENLOOM_CACHE"] = str(cache)
    return env


def time_to_loss(run: Path, target: float) -> float | None:
    """Seconds (from the command) at which the run's validation loss first reached `target`, interpolated
    linearly between its evaluations; None if it never did."""
    from genloom.train.metrics import MetricsLog

    points = [(0.0, float("inf"))] + [(float(r["time_s"]), float(r["val_loss"]))
                                      for r in MetricsLog.read(run / "metrics.csv") if r["val_loss"]]
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if v1 <= target:
            if v0 == float("inf"):
                return t1
            return t0 + (t1 - t0) * (v0 - target) / (v0 - v1)
    return None


def bench_quality(budget: float, work: Path, extra: list[str] = (), cache: Path | None = None,
                  label: str = "") -> dict:
    """`genloom train shakespeare-char --max-time BUDGET`, then `genloom eval`, as a user runs them. `cache`:
    the run's cache folder (a new, empty one unless given: a first run on a fresh machine)."""
    out = work / f"quality-{int(budget)}-{len(list(work.glob('quality-*')))}"
    cache = cache or work / f"cache-{out.name}"
    sets = [x for o in [f"data.path={TINY_SHAKESPEARE}", "train.progress=false", *extra] for x in ("--set", o)]
    start = time.perf_counter()
    trained = subprocess.run([sys.executable, "-m", "genloom", "train", "shakespeare-char", *sets, "--max-time",
                              str(budget), "--out", str(out)], capture_output=True, text=True, env=_env(cache))
    wall = time.perf_counter() - start
    if trained.returncode != 0:
        raise SystemExit(f"genloom train failed:\n{trained.stderr[-3000:]}")
    result = subprocess.run([sys.executable, "-m", "genloom", "eval", "--checkpoint", str(out), "--data",
                             str(TINY_SHAKESPEARE)], check=True, capture_output=True, text=True, env=_env(cache))
    values = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines() if ": " in line)
    state = json.loads((out / "train_state.json").read_text())
    config = json.loads((out / "config.json").read_text())
    decision = next((line.split("compile=auto: ", 1)[1].split(" (")[0] for line in trained.stderr.splitlines()
                     if "compile=auto: " in line and "compile=auto: measured" not in line),
                    str(config["train"]["compile"]))
    model = config["model"]
    reached = time_to_loss(out, NANOGPT_RECORDED["val_loss"])
    row = {"run": label or "first run (empty caches)", "budget_s": budget, "command_wall_s": round(wall, 1),
           "steps": state["step"], "val_loss": float(values["loss"].split()[0]),
           "model": f"{model['n_layer']} x {model['d_model']}, batch {config['train']['batch_size']}",
           "precision": config.get("machine", {}).get("precision", config["train"]["precision"]),
           "compile": decision, "s_to_1.886": round(reached, 1) if reached else None,
           "overrides": " ".join(extra) or "-", "checkpoint": str(out), "cache": str(cache)}
    print(f"  quality {budget:.0f} s [{row['run']}] {extra}: val loss {row['val_loss']:.4f} ({row['steps']} steps, "
          f"{row['precision']}, compile {decision}, wall {wall:.0f} s)", flush=True)
    return row


def bench_first_runs(work: Path, budget: float = 107) -> list[dict]:
    """The recipe as a new user meets it: a first run on empty caches, then the same command again (warm),
    and first runs with compile and bf16 switched off to show what each choice is worth."""
    first = bench_quality(budget, work)
    rows = [first, bench_quality(budget, work, cache=Path(first["cache"]), label="second run (warm caches)")]
    rows.append(bench_quality(budget, work, ["train.compile=false"], label="first run, compile off"))
    rows.append(bench_quality(budget, work, ["train.precision=fp32"], label="first run, fp32 forced"))
    return rows


def run_nanogpt(checkout: Path, work: Path) -> dict:
    """nanoGPT's README CPU configuration in this run, on the same Tiny Shakespeare file: wall time and the
    final validation loss it prints (estimated by nanoGPT over 20 batches)."""
    data = checkout / "data" / "shakespeare_char"
    if not (checkout / "train.py").is_file() or not (data / "prepare.py").is_file():
        raise SystemExit(f"--nanogpt {checkout}: not a nanoGPT checkout (train.py, data/shakespeare_char/prepare.py)")
    if not (data / "input.txt").is_file():
        (data / "input.txt").write_bytes(TINY_SHAKESPEARE.read_bytes())   # prepare.py downloads only when absent
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "train.py", *NANOGPT_ARGS, f"--out_dir={work / 'nanogpt'}"],
                          cwd=checkout, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    losses = [line for line in done.stdout.splitlines() if "val loss" in line]
    if not losses:
        raise SystemExit("nanoGPT printed no 'val loss' line:\n" + done.stdout[-2000:])
    val = float(losses[-1].rsplit("val loss", 1)[1].strip(" :,"))
    print(f"  nanoGPT: val loss {val:.4f} in {wall:.0f} s", flush=True)
    return {"val_loss": val, "wall_s": round(wall, 1), "source": f"nanoGPT at {checkout}, run in this benchmark"}


COMPILE_PROBE = """
import os, sys, time, torch, torch.nn.functional as F
from genloom.core.config import load_recipe
from genloom.lm.transformer import Transformer
mode, precision = sys.argv[1], sys.argv[2]
config = load_recipe("shakespeare-char", ["model.vocab_size=65"]).model
torch.manual_seed(0)
model = Transformer(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
if mode == "whole":
    model_call = torch.compile(model)
elif mode == "regional":             # each block compiled on its own (measured against whole; genloom compiles whole)
    for block in model.blocks:
        block.compile()
    model_call = model
else:
    model_call = model
x, y = torch.randint(0, 65, (16, config.block_size)), torch.randint(0, 65, (16, config.block_size))
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = F.cross_entropy(model_call(x).flatten(0, 1).float(), y.flatten())
    loss.backward(); optimizer.step(); optimizer.zero_grad(set_to_none=True)
start = time.perf_counter(); step(); first = time.perf_counter() - start
for _ in range(3): step()
times = []
for _ in range(20):
    start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
print(first, sorted(times)[10])
"""


def bench_cold_start(work: Path, precision: str) -> list[dict]:
    """What compiling costs the recipe's model: the first step (which holds the compile) and the steady step,
    eager against the whole model compiled against block by block, on empty and on warm caches."""
    rows = []
    for mode in ("eager", "whole", "regional"):
        cache = work / f"compile-{mode}"
        for state in ("cold", "warm"):
            if mode == "eager" and state == "warm":
                continue
            done = subprocess.run([sys.executable, "-c", COMPILE_PROBE, mode, precision], capture_output=True,
                                  text=True, check=True, env={**_env(cache), "TORCHINDUCTOR_CACHE_DIR": str(cache)})
            first, steady = map(float, done.stdout.split())
            rows.append({"compile": mode, "cache": state, "precision": precision, "first_step_s": round(first, 2),
                         "steady_step_ms": round(1000 * steady, 1)})
            print(f"  cold start {mode} {state}: first step {first:.1f} s, then {1000 * steady:.1f} ms", flush=True)
    eager = rows[0]["steady_step_ms"]
    for row in rows:
        row["speedup"] = round(eager / row["steady_step_ms"], 2)
        # Steps in 107 s: (107 - compile) / step, the compile being the first step's excess over a steady one.
        compile_s = max(0.0, row["first_step_s"] - row["steady_step_ms"] / 1000)
        row["steps_in_107s"] = int((107 - compile_s) / (row["steady_step_ms"] / 1000))
    return rows


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
        row = bench_quality(107, work, overrides, label="ablation")
        rows.append({"change": name, "steps": row["steps"], "val_loss_107s": row["val_loss"]})
    return rows


# ----------------------------------------------------------------------------------------------
# Decoding speed: genloom against transformers' generate() on the same weights
# ----------------------------------------------------------------------------------------------

# Bytes read per weight by each format (llama.cpp's blocks: q8_0 = 32 int8 + one f16 scale, q4_0 = 32 4-bit
# codes + one f16 scale; genloom's int8 has one scale per row, int4 a bf16 scale and zero point per 128 inputs).
BYTES_PER_WEIGHT = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5 + 4 / 128,
                    "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def _bench_tokenizer():
    """A small byte-level BPE tokenizer (GGUF needs one; random-weight models pad the rest of the vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([TINY_SHAKESPEARE.read_text()[:200_000]], trainers.BpeTrainer(
        vocab_size=512, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tokenizer


def llama_cpp_speed(path: Path, vocab: int, new_tokens: int, prompt_len: int = 16) -> float:
    """Tokens/s of llama.cpp's greedy decoding of one sequence (the Python bindings decode one at a time)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=prompt_len + new_tokens + 8, n_threads=torch.get_num_threads(),
                n_threads_batch=torch.get_num_threads(), verbose=False)
    prompt = torch.randint(0, vocab, (prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()

    def run(count: int) -> None:
        for n, _ in enumerate(llm.generate(prompt, top_k=1, temp=0.0, reset=True), start=1):
            if n >= count:
                break

    run(4)
    start = time.perf_counter()
    run(new_tokens)
    speed = new_tokens / (time.perf_counter() - start)
    llm.close() if hasattr(llm, "close") else None
    return speed


def _decode_models():
    """(name, transformers model, the same weights as a genloom Transformer): GPT-2 124M and a SmolLM-135M-shaped
    Llama, random weights."""
    import transformers

    from genloom.lm.hf import from_hf
    from genloom.lm.transformer import Transformer

    transformers.logging.set_verbosity_error()
    configs = [("GPT-2 124M (random weights)", transformers.GPT2LMHeadModel, transformers.GPT2Config()),
               ("SmolLM-135M-shaped Llama (random weights)", transformers.LlamaForCausalLM, transformers.LlamaConfig(
                   vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, rope_theta=100000.0,
                   tie_word_embeddings=True, rms_norm_eps=1e-5))]
    for name, cls, config in configs:
        torch.manual_seed(0)
        hf = cls(config).eval()
        ours_config, state = from_hf(hf.config.to_dict(), hf.state_dict())
        ours = Transformer(ours_config).eval()
        ours.load_state_dict(state, strict=False)
        yield name, hf, ours


def bench_decoding(bandwidth: float, work: Path, new_tokens: int = 256) -> list[dict]:
    """Greedy decoding, 16 prompt tokens + 256 new ones, at batch 1 and 8: transformers' generate() in fp32
    against genloom fp32 / bf16 / int8 / int4 on the same weights, against llama.cpp on the same weights
    exported to GGUF (f16, Q8_0, Q4_0; batch 1), and against the bandwidth bound of each format."""
    sys.path.insert(0, str(ROOT / "bench"))
    from quant_bench import decode_speed, hf_decode_speed

    from genloom.lm.gguf import export_gguf

    try:
        import llama_cpp  # noqa: F401
        have_llama_cpp = True
    except ImportError:
        have_llama_cpp = False
        print("  llama-cpp-python is not installed (pip install -e '.[bench]'): no llama.cpp columns", flush=True)
    tokenizer = _bench_tokenizer()
    rows = []
    for name, hf, model in _decode_models():
        n_weights = sum(p.numel() for p in model.parameters())
        vocab = model.config.vocab_size
        llama = {}
        if have_llama_cpp:
            for quant in ("f16", "q8_0", "q4_0"):
                path = export_gguf(model, tokenizer, work / f"{name.split()[0]}-{quant}.gguf", quant=quant)
                llama[quant] = llama_cpp_speed(path, vocab, new_tokens)
        for batch in (1, 8):
            speeds = {"transformers": hf_decode_speed(hf, batch, new_tokens, vocab=vocab)}
            for precision in ("fp32", "bf16", "int8", "int4"):
                speeds[precision] = decode_speed(model, batch, new_tokens, None if precision == "fp32" else precision)
            speeds["transformers_again"] = hf_decode_speed(hf, batch, new_tokens, vocab=vocab)   # drift check
            reference = (speeds["transformers"] + speeds["transformers_again"]) / 2
            row = {"model": name, "batch": batch, "transformers_fp32_tok_s": round(reference, 1)}
            for precision in ("fp32", "bf16", "int8", "int4"):
                bound = bandwidth * 1e9 / (n_weights * BYTES_PER_WEIGHT[precision]) * batch
                row[f"genloom_{precision}_tok_s"] = round(speeds[precision], 1)
                row[f"{precision}_vs_transformers"] = round(speeds[precision] / reference, 2)
                row[f"{precision}_of_bound"] = round(speeds[precision] / bound, 2)
            for quant, speed in llama.items():
                row[f"llama.cpp_{quant}_tok_s"] = round(speed, 1) if batch == 1 else "-"
            if llama and batch == 1:
                row["int8_vs_llama.cpp_q8_0"] = round(speeds["int8"] / llama["q8_0"], 2)
                row["int4_vs_llama.cpp_q4_0"] = round(speeds["int4"] / llama["q4_0"], 2)
            rows.append(row)
            print(f"  decode {name} batch {batch}: " + ", ".join(f"{k} {v:.1f}" for k, v in speeds.items())
                  + (f"; llama.cpp " + ", ".join(f"{k} {v:.1f}" for k, v in llama.items()) if llama else ""),
                  flush=True)
    return rows


# ----------------------------------------------------------------------------------------------

def cpu_name() -> str:
    """The CPU and the flags that decide matmul speed (`AMD EPYC ... (avx512_bf16, avx512_vnni, no AMX)`),
    for every bench's report; the other benches import it from here."""
    from genloom.core.machine import cpu_summary
    return cpu_summary()


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
        columns = list(dict.fromkeys(c for row in rows for c in row))
        out.append(f"### {section}\n")
        out.append("| " + " | ".join(columns) + " |")
        out.append("|" + "---|" * len(columns))
        for row in rows:
            out.append("| " + " | ".join(str(row.get(c, "-")) for c in columns) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=PARTS, action="append", help="run only these parts (repeatable)")
    parser.add_argument("--long", action="store_true", help="also train for 15 minutes (a first run)")
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout: run its README CPU configuration in this "
                        "run (else its recorded figure is used)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    parts = set(args.only or PARTS)
    if not TINY_SHAKESPEARE.is_file():
        sys.exit(f"{TINY_SHAKESPEARE} is missing: the benchmark uses the standard Tiny Shakespeare file")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="genloom-bench-"))
    os.environ["GENLOOM_CACHE"] = str(work / "cache")
    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)

    from genloom.core.machine import cpu_summary, machine_profile

    profile = machine_profile("cpu")
    results: dict = {"machine": [{
        "cpu": cpu_summary(), "cores": os.cpu_count(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "probe_fp32_gflops": profile["fp32_gflops"],
        "probe_bf16_gflops": profile["bf16_gflops"], "date": time.strftime("%Y-%m-%d")}]}
    print(f"machine: {results['machine'][0]}\nmeasuring peaks", flush=True)
    peaks = {"fp32_gflops": round(matmul_peak(torch.float32), 1), "bf16_gflops": round(matmul_peak(torch.bfloat16), 1),
             "read_GB_s": round(read_bandwidth(), 1)}
    results["peaks"] = [peaks]
    print(f"  {peaks}", flush=True)
    nanogpt = run_nanogpt(args.nanogpt, work) if args.nanogpt else NANOGPT_RECORDED
    results["nanoGPT"] = [nanogpt]
    if "coldstart" in parts:
        precision = "bf16" if profile["bf16_gflops"] >= 1.25 * profile["fp32_gflops"] else "fp32"
        results["cold starts"] = bench_cold_start(work, precision)
    if "train" in parts:
        results["training throughput"] = bench_training(peaks, work)
    if "quality" in parts:
        rows = bench_first_runs(work)
        if args.long:
            rows.append(bench_quality(900, work, label="first run (empty caches)"))
        for row in rows:
            reached = row["s_to_1.886"]
            row["time_to_nanogpt_ratio"] = round(reached / nanogpt["wall_s"], 2) if reached else None
        results["quality at a fixed budget"] = rows
    if "ablation" in parts:
        results["ablation (107 s each)"] = bench_ablation(work)
    if "decode" in parts:
        results["decoding"] = bench_decoding(peaks["read_GB_s"], work)
    (args.out / "text.json").write_text(json.dumps(results, indent=2))
    print()
    print(markdown(results))


PARTS = ["coldstart", "train", "quality", "ablation", "decode"]


if __name__ == "__main__":
    main()
