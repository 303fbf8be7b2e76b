"""Issue 27's benchmarks: the limits of a biographies model and each mitigation measured with the same task.

Trains (or reuses, with --reuse) four runs under --out: the biographies recipe (base), the same with
data.counterfactual = "builtin" (bias), with data.both_ways = true (reversal), and the "I don't know"
fine-tune of the base; then evaluates them and writes OUT/limits.json, a Markdown table (OUT/limits.md) and the
plots (OUT/*.png; --images DIR copies them there, e.g. docs/images).

    flock /tmp/genloom-heavy.lock nice -n 19 python bench/limits_bench.py --out bench/out/limits --max-time 720

--tasks picks the evaluations (and so the runs: hallucination needs the "I don't know" fine-tune, bias the
counterfactual run, understanding the both-ways run); consistency's contrastive search takes ~3 minutes a text.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from genloom import api, load
from genloom.text.limits import write_report

TASKS = ("hallucination", "bias", "understanding", "consistency", "context")


def train(name: str, out: Path, max_time: float, reuse: bool, overrides=(), base: Path | None = None) -> Path:
    if reuse and (out / "model.safetensors").is_file():
        return out
    started = time.time()
    if base is None:
        api.train(name, out=out, overrides=list(overrides), max_time=max_time)
    else:
        api.finetune(name, base, out=out, overrides=list(overrides), max_time=max_time)
    print(f"{name} -> {out}: {time.time() - started:.0f} s", flush=True)
    return out


def evaluate(run: Path, task: str, out: Path, **options) -> dict:
    started = time.time()
    result = api.evaluate(load(run), task=task, progress=False, **options)
    write_report(result, out / f"{task}-{run.name}.json")
    print(result.summary(), f"\n({time.time() - started:.0f} s)", flush=True)
    return result.to_json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/out/limits"))
    parser.add_argument("--max-time", type=float, default=720, help="seconds per training run")
    parser.add_argument("--idk-time", type=float, default=420, help="seconds of \"I don't know\" fine-tuning")
    parser.add_argument("--reuse", action="store_true", help="keep runs already in --out")
    parser.add_argument("--images", type=Path, help="copy the plots here (e.g. docs/images)")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"comma-separated tasks to evaluate (default: all of {', '.join(TASKS)}); a run only "
                             "one of the skipped tasks needs is not trained")
    args = parser.parse_args()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"--tasks: unknown {', '.join(unknown)}; expected some of {', '.join(TASKS)}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    base = train("biographies", out / "base", args.max_time, args.reuse)
    figures: dict = {}
    if "hallucination" in tasks:
        idk = train("biographies-idk", out / "idk", args.idk_time, args.reuse, base=base)
        figures["hallucination"] = {r.name: evaluate(r, "hallucination", out) for r in (base, idk)}
    if "bias" in tasks:
        cf = train("biographies", out / "counterfactual", args.max_time, args.reuse, ["data.counterfactual=builtin"])
        figures["bias"] = {r.name: evaluate(r, "bias", out) for r in (base, cf)}
    if "understanding" in tasks:
        bw = train("biographies", out / "both-ways", args.max_time, args.reuse, ["data.both_ways=true"])
        figures["understanding"] = {r.name: evaluate(r, "understanding", out) for r in (base, bw)}
    for task in ("consistency", "context"):
        if task in tasks:
            figures[task] = {base.name: evaluate(base, task, out)}
    (out / "limits.json").write_text(json.dumps(figures, indent=2, default=float) + "\n")
    rows = []
    if "hallucination" in figures:
        h = figures["hallucination"]
        rows += [
            ("seen accuracy, held-out questions (base / idk)", h["base"]["seen_accuracy"], h["idk"]["seen_accuracy"]),
            ("seen accuracy, trained questions (base / idk)", h["base"]["seen_trained_accuracy"],
             h["idk"]["seen_trained_accuracy"]),
            ("unseen made-up answers (base / idk)", h["base"]["unseen_made_up"], h["idk"]["unseen_made_up"]),
            ("unseen made-up after abstention (base / idk)", h["base"].get("abstain_unseen_made_up"),
             h["idk"].get("abstain_unseen_made_up")),
            ("seen held-out accuracy after abstention (base / idk)", h["base"].get("abstain_seen_accuracy"),
             h["idk"].get("abstain_seen_accuracy")),
            ("ECE (base / idk)", h["base"]["ece"], h["idk"]["ece"]),
            ("AUROC log-probability (base / idk)", h["base"]["auroc_logprob"], h["idk"]["auroc_logprob"]),
            ("AUROC agreement (base / idk)", h["base"].get("auroc_agreement"), h["idk"].get("auroc_agreement")),
        ]
    if "understanding" in figures:
        u = figures["understanding"]
        rows += [
            ("reversed accuracy, reversal split (base / both ways)", u["base"]["reversed_accuracy"],
             u["both-ways"]["reversed_accuracy"]),
            ("forward accuracy, reversal split (base / both ways)", u["base"]["forward_accuracy"],
             u["both-ways"]["forward_accuracy"]),
            ("two-hop accuracy (base / both ways)", u["base"]["two_hop_accuracy"], u["both-ways"]["two_hop_accuracy"]),
        ]
    if "bias" in figures:
        b = figures["bias"]
        rows += [
            ("planted-bias amplification (base / counterfactual)", b["base"]["amplification"],
             b["counterfactual"]["amplification"]),
            ("model rate / parity (base / counterfactual)", b["base"]["ratio_to_parity"],
             b["counterfactual"]["ratio_to_parity"]),
        ]
    table = ["| figure | first | second |", "|---|---|---|"]
    table += [f"| {name} | {'' if x is None else f'{x:.3f}'} | {'' if y is None else f'{y:.3f}'} |" for name, x, y in rows]
    (out / "limits.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    if args.images:
        args.images.mkdir(parents=True, exist_ok=True)
        for png in out.glob("*.png"):
            shutil.copy(png, args.images / f"limits-{png.name}")


if __name__ == "__main__":
    main()
