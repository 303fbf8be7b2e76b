"""Code generation, measured: the tokenizer's compression, the sandbox's speed and a trained model's scores.

    python bench/code_bench.py [--run DIR] [--train-seconds 1800] [--out bench/out/code]

1. Tokenizers: byte-level BPE (4,096 tokens, the python-code recipe's) trained the same way once on the
   standard library's training files and once on prose (the built-in Shakespeare corpus); bytes per token
   of each on held-out code (the held-out standard-library files) and held-out prose (its last 10%).
2. Sandbox: trivial tasks (a one-line function and its assert) run through the sandbox on every core;
   samples per second.
3. A model: the python-code recipe for --train-seconds (or --run DIR): held-out perplexity and bits per
   byte, the share of sampled function bodies that parse, single-line and single-expression infilling exact
   match, pass@1 and pass@10 on genloom's task set (10 samples per task, at temperatures 0.2 and 0.8).
Results go to OUT/code.json and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from text_bench import cpu_name, run_length  # noqa: E402


def bytes_per_token(tokenizer, texts: list[str]) -> float:
    tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    return sum(len(t.encode()) for t in texts) / tokens


def tokenizers() -> dict:
    from genloom.code.data import code_files, is_validation, train_code_tokenizer
    from genloom.core.sources import open_text_source

    files = code_files("builtin:stdlib", (".py",))
    code_train = [t for r, t in files if not is_validation(r, 0.05)]
    code_val = [t for r, t in files if is_validation(r, 0.05)]
    prose = "".join(open_text_source("builtin:shakespeare").chunks())
    cut = int(len(prose) * 0.9)
    prose_train, prose_val = prose[:cut], prose[cut:]
    prose_val_pieces = [prose_val[i:i + 10_000] for i in range(0, len(prose_val), 10_000)]
    trained = {"code": train_code_tokenizer(iter(code_train), 4096),
               "prose": train_code_tokenizer(iter([prose_train[i:i + 100_000]
                                                   for i in range(0, len(prose_train), 100_000)]), 4096)}
    return {"train_mb": {"code": sum(len(t.encode()) for t in code_train) / 1e6, "prose": len(prose_train.encode()) / 1e6},
            "bytes_per_token": {name: {"held-out code": bytes_per_token(tok, code_val),
                                       "held-out prose": bytes_per_token(tok, prose_val_pieces)}
                                for name, tok in trained.items()},
            "indent_example": {name: len(tok.encode("        return value\n")) for name, tok in trained.items()}}


def sandbox(n: int = 400) -> dict:
    from genloom.code.sandbox import run_many

    programs = [f"def f(x):\n    return x + {i}\nassert f(1) == {i + 1}\n" for i in range(n)]
    started = time.perf_counter()
    results = run_many(programs)
    seconds = time.perf_counter() - started
    return {"samples": n, "passed": sum(r.passed for r in results), "samples_per_s": n / seconds}


def model(run: Path | None, seconds: int, out: Path) -> dict:
    if run is None:
        run = out / "python-code"
        subprocess.run([sys.executable, "-m", "genloom", "train", "python-code", "--out", str(run), "--max-time",
                        str(seconds)], check=True)
    import genloom

    handle = genloom.load(run)
    config = json.loads((run / "config.json").read_text())
    started = time.perf_counter()
    score = handle.evaluate()
    code = handle.evaluate_code(num_samples=10, syntax_samples=100, infill_samples=200, temperatures=(0.2, 0.8),
                                seed=0)
    return {"run": str(run), "model": {k: config["model"][k] for k in ("n_layer", "d_model", "n_head", "block_size")},
            **run_length(run),
            "held_out": {"nats_per_token": score.nats_per_token, "perplexity": score.perplexity,
                         "bits_per_byte": score.bits_per_byte, "tokens": score.tokens},
            "code": code.to_json(), "eval_seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a python-code checkpoint (default: train one)")
    parser.add_argument("--train-seconds", type=int, default=1800)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "code")
    parser.add_argument("--skip-model", action="store_true", help="only the tokenizer and sandbox measurements")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": cpu_name(), "tokenizers": tokenizers(), "sandbox": sandbox()}
    if not args.skip_model:
        result["model"] = model(args.run, args.train_seconds, args.out)
    (args.out / "code.json").write_text(json.dumps(result, indent=2))

    t = result["tokenizers"]["bytes_per_token"]
    print(f"machine: {result['machine']}\n")
    print("| tokenizer (BPE 4,096) | held-out code bytes/token | held-out prose bytes/token |\n|---|---|---|")
    for name in ("code", "prose"):
        print(f"| trained on {name} | {t[name]['held-out code']:.2f} | {t[name]['held-out prose']:.2f} |")
    print(f"\ncode / prose tokenizer on code: {t['code']['held-out code'] / t['prose']['held-out code']:.2f}x bytes "
          f"per token; `        return value\\n` is {result['tokenizers']['indent_example']['code']} tokens vs "
          f"{result['tokenizers']['indent_example']['prose']}")
    s = result["sandbox"]
    print(f"\nsandbox: {s['samples_per_s']:.1f} trivial samples/s ({s['passed']}/{s['samples']} passed)")
    if "model" in result:
        m = result["model"]
        c = m["code"]
        print(f"\nmodel {m['model']}, {m['steps']} steps in {m['train_seconds']:.0f} s")
        print(f"held-out perplexity {m['held_out']['perplexity']:.2f}, {m['held_out']['bits_per_byte']:.3f} bits per "
              f"byte; infilling exact match: single lines {c['infill_line_exact']:.1%}, single expressions "
              f"{c['infill_expression_exact']:.1%} ({c['infill_cases']} each)\n")
        print("| temperature | syntax valid | ended at the function's end | pass@1 | pass@10 |\n|---|---|---|---|---|")
        for t in c["syntax_valid"]:
            print(f"| {t} | {c['syntax_valid'][t]:.1%} | {c['syntax_finished'][t]:.1%} | {c['pass_at'][t][1]:.1%} | "
                  f"{c['pass_at'][t][10]:.1%} |")

if __name__ == "__main__":
    main()
