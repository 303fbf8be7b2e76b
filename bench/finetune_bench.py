"""Fine-tuning side by side: LoRA against full fine-tuning, and the safety recipe before and after.

    python bench/finetune_bench.py [--base runs/quickstart] [--out bench/out/finetune]

1. A base model: the shakespeare-char recipe for 180 s (or --base DIR).
2. On the shakespeare-char-lora task (Romeo and Juliet, a play in the base's validation split):
   the base's validation loss, then LoRA (the recipe) and full fine-tuning (the same recipe with
   finetune.method=full, at two learning rates, best kept) with the same steps and batch. Reports
   the trainable share, validation losses, the LoRA/full ratio, adapter and base file sizes.
3. The shakespeare-char-safety recipe from the same base: refusal rate on held-out harmful requests and
   answer rate on held-out harmless ones, before (the base with the chat template) and after.
Results go to OUT/finetune.json and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from text_bench import cpu_name  # noqa: E402


def last_val(run: Path) -> float:
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("val_loss")
    return [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="a shakespeare-char checkpoint (default: train one for 180 s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "finetune")
    parser.add_argument("--full-lrs", default="1e-3,3e-4", help="learning rates tried for full fine-tuning")
    args = parser.parse_args()

    import genloom
    from genloom import api

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = args.base
    if base is None:
        base = args.out / f"base-{stamp}"
        genloom.train("shakespeare-char", out=base, max_time=180)
    results: dict = {"machine": cpu_name(), "base": str(base)}

    # -- LoRA against full fine-tuning --------------------------------------------------------------
    handle = genloom.load(base)
    from genloom.core.config import load_recipe
    task = load_recipe("shakespeare-char-lora", base=base)
    before = handle.evaluate(task.data.path, progress=False)
    results["task"] = {"data": task.data.path, "base_val_loss": before.nats_per_token}

    started = time.perf_counter()
    lora = args.out / f"lora-{stamp}"
    api.finetune("shakespeare-char-lora", base, out=lora)
    lora_time = time.perf_counter() - started
    lora_loss = genloom.load(lora).evaluate(progress=False).nats_per_token
    n_params = sum(p.numel() for p in handle.model.parameters())
    adapter_params = sum(t.numel() for t in __import__("safetensors.torch", fromlist=["load_file"])
                         .load_file(str(lora / "adapter.safetensors")).values())
    full_runs = {}
    for lr in args.full_lrs.split(","):
        run = args.out / f"full-lr{lr}-{stamp}"
        started = time.perf_counter()
        api.finetune("shakespeare-char-lora", base, out=run,
                     overrides=["finetune.method=full", f"train.lr={lr}"])
        full_runs[lr] = {"val_loss": genloom.load(run).evaluate(progress=False).nats_per_token,
                         "seconds": time.perf_counter() - started, "dir": str(run)}
    best_lr = min(full_runs, key=lambda k: full_runs[k]["val_loss"])
    base_bytes = (base / "model.safetensors").stat().st_size
    adapter_bytes = (lora / "adapter.safetensors").stat().st_size
    results["lora"] = {"val_loss": lora_loss, "seconds": lora_time, "trainable": adapter_params,
                       "parameters": n_params, "trainable_share": adapter_params / n_params,
                       "adapter_bytes": adapter_bytes, "base_bytes": base_bytes,
                       "size_share": adapter_bytes / base_bytes, "dir": str(lora)}
    results["full"] = full_runs
    results["lora_over_full"] = lora_loss / full_runs[best_lr]["val_loss"]

    # -- safety ----------------------------------------------------------------------------------
    safety = args.out / f"safety-{stamp}"
    started = time.perf_counter()
    api.finetune("shakespeare-char-safety", base, out=safety)
    safety_time = time.perf_counter() - started
    before_safety = genloom.load(base).evaluate_safety(progress=False)
    after_safety = genloom.load(safety).evaluate_safety(progress=False)
    results["safety"] = {"seconds": safety_time, "before": before_safety.to_json(), "after": after_safety.to_json(),
                         "dir": str(safety)}
    (args.out / "finetune.json").write_text(json.dumps(results, indent=2))

    print(f"machine: {results['machine']}; base {base}\n")
    print("| run | trainable | val loss (R&J) | time |\n|---|---|---|---|")
    print(f"| base, no fine-tuning | - | {before.nats_per_token:.4f} | - |")
    print(f"| LoRA r=4 (attention) | {adapter_params:,} ({100 * adapter_params / n_params:.2f}%) | {lora_loss:.4f} | "
          f"{lora_time:.0f} s |")
    for lr, run in full_runs.items():
        print(f"| full, lr {lr} | {n_params:,} (100%) | {run['val_loss']:.4f} | {run['seconds']:.0f} s |")
    print(f"\nLoRA / best full: {results['lora_over_full']:.4f}; adapter {adapter_bytes:,} bytes = "
          f"{100 * adapter_bytes / base_bytes:.2f}% of the base's {base_bytes:,}")
    print(f"\nsafety ({safety_time:.0f} s of tuning): refusals {100 * before_safety.refusal_rate:.1f}% -> "
          f"{100 * after_safety.refusal_rate:.1f}% on {after_safety.harmful} held-out harmful requests; answers "
          f"{100 * before_safety.answer_rate:.1f}% -> {100 * after_safety.answer_rate:.1f}% on "
          f"{after_safety.harmless} held-out harmless requests")
    print(after_safety.summary())


if __name__ == "__main__":
    main()
