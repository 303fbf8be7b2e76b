"""Flow matching against diffusion, and few-step distillation: FID against function evaluations on digits.

    python bench/flow_bench.py                       # train digits-flow and digits-diffusion (~10 min each)
                                                     # into bench/out/flow/ unless there, then measure
    python bench/flow_bench.py --samples 500         # fewer images per row (faster, noisier)
    python bench/flow_bench.py --skip-distill        # only the FID-vs-NFE table

1. FID-digits (Fréchet distance on genloom's digits-classifier features; not the standard FID) and class
   accuracy of 1,000 class-balanced samples (seeds 0..999) at 4-50 steps: the flow model with Euler and
   Heun, the diffusion model with its recipe's DPM-Solver++(2M) and Euler. NFE = network calls per image.
2. Distillation candidates on the flow model, 2 Euler steps each, from the same 8,192 teacher samples (20
   Euler steps) and the same number of student steps in all: reflow, and progressive distillation in 3
   rounds (16 -> 8 -> 4 -> 2 steps), with their wall time (`genloom.api.distill`).
3. The targets: flow at 10 steps within 10% of diffusion at 20; the distilled 2-step FID within 15% of the
   teacher's 20-step FID, class accuracy within 2 points.

Writes bench/out/flow.json, docs/images/flow-fid-nfe.png (the plot) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from text_bench import cpu_name, markdown  # noqa: E402

STEPS = (4, 10, 20, 50)
RUNS = {"flow": "digits-flow", "diffusion": "digits-diffusion"}
SAMPLERS = {"flow": ("euler", "heun"), "diffusion": ("dpmpp_2m", "euler")}


def train(recipe: str, out: Path, overrides: list[str]) -> float:
    start = time.perf_counter()
    sets = [item for text in ["train.progress=false", *overrides] for item in ("--set", text)]
    subprocess.run([sys.executable, "-m", "genloom", "train", recipe, "--out", str(out), *sets], check=True)
    return time.perf_counter() - start


def row(handle, label: str, sampler: str, steps: int, samples: int) -> dict:
    from genloom.diffusion.samplers import function_evaluations

    start = time.perf_counter()
    result = handle.evaluate(num_samples=samples, steps=steps, sampler=sampler, progress=False)
    out = {"model": label, "sampler": sampler, "steps": steps, "NFE": function_evaluations(sampler, steps),
           result.fid_name: round(result.fid, 3), "precision": round(result.precision, 3),
           "recall": round(result.recall, 3), "class_accuracy": round(result.accuracy, 4),
           "seconds": round(time.perf_counter() - start, 1)}
    print(f"  {label} {sampler} {steps}: {result.fid_name} {result.fid:.3f}, accuracy {result.accuracy:.4f}",
          flush=True)
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = next(k for k in rows[0] if k.startswith("FID-"))
    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, sampler in dict.fromkeys((r["model"], r["sampler"]) for r in rows):
        points = [(r["NFE"], r[key]) for r in rows if r["model"] == label and r["sampler"] == sampler]
        marker = "*" if "distilled" in label else "o"
        axis.plot(*zip(*points), marker=marker, markersize=10 if marker == "*" else 5, label=f"{label}, {sampler}")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("network evaluations per image (NFE)")
    axis.set_ylabel(f"{key} (lower is better)")
    axis.set_title("digits: flow matching vs diffusion, and 2-step distillation")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "bench" / "out" / "flow",
                        help="folder of the trained runs (trained there when missing)")
    parser.add_argument("--samples", type=int, default=1000, help="generated images per table row")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a recipe override for both trainings, e.g. train.max_steps=1000 (repeatable)")
    parser.add_argument("--skip-distill", action="store_true", help="only the FID-vs-NFE table")
    parser.add_argument("--steps", type=lambda text: tuple(int(n) for n in text.split(",")), default=STEPS,
                        help="sampler steps of the table, e.g. 4,10,20,50 (10 and 20 are needed for the targets)")
    parser.add_argument("--pairs", type=int, default=8192, help="distillation: teacher samples")
    parser.add_argument("--distill-batch", type=int, default=128, help="distillation: pairs per student step")
    parser.add_argument("--diffusion-samplers", default="dpmpp_2m,euler", help="the diffusion model's samplers "
                        "in the table (comma-separated)")
    parser.add_argument("--train-steps", type=int, default=2100, help="distillation: student optimizer steps in all "
                        "(progressive: a third per round of its 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "images" / "flow-fid-nfe.png")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from genloom import api, load

    results: dict = {"machine": [{"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                                  "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}]}
    training = []
    handles = {}
    for kind, recipe in RUNS.items():
        folder = args.runs / recipe
        if not (folder / "model.safetensors").is_file():
            seconds = train(recipe, folder, args.overrides)
            training.append({"recipe": recipe, "overrides": " ".join(args.overrides), "wall_s": round(seconds, 1)})
        state = json.loads((folder / "train_state.json").read_text())
        training.append({"recipe": recipe, "steps": state["step"], "checkpoint": str(folder)})
        handles[kind] = load(folder)
    results["training"] = training

    rows = []
    for kind, handle in handles.items():
        for sampler in (SAMPLERS[kind] if kind == "flow" else args.diffusion_samplers.split(",")):
            for steps in args.steps:
                rows.append(row(handle, RUNS[kind], sampler, steps, args.samples))
    results["quality against function evaluations"] = rows
    key = next(k for k in rows[0] if k.startswith("FID-"))

    def find(model: str, sampler: str, steps: int) -> dict:
        return next(r for r in rows if r["model"] == model and r["sampler"] == sampler and r["steps"] == steps)

    flow10, flow20, diffusion20 = find("digits-flow", "euler", 10), find("digits-flow", "euler", 20), \
        find("digits-diffusion", "dpmpp_2m", 20)
    targets = [{"target": "flow 10 steps within 10% of diffusion 20 steps",
                "measured": f"{flow10[key]} vs {diffusion20[key]} (ratio {flow10[key] / diffusion20[key]:.3f})",
                "met": flow10[key] <= 1.10 * diffusion20[key]}]

    if not args.skip_distill:
        distilled = []
        for method in ("reflow", "progressive"):
            folder = args.runs / f"digits-flow-2step-{method}"
            start = time.perf_counter()
            if not (folder / "model.safetensors").is_file():
                api.distill(args.runs / "digits-flow", folder, steps=2, method=method, pairs=args.pairs,
                            train_steps=args.train_steps // (3 if method == "progressive" else 1), rounds=3,
                            teacher_steps=20, batch_size=args.distill_batch, progress=False)
            seconds = time.perf_counter() - start
            student = load(folder)
            result = row(student, f"distilled ({method})", "euler", 2, args.samples)
            result["distill_seconds"] = round(seconds, 1)
            rows.append(result)
            distilled.append(result)
            targets.append({"target": f"{method} 2 steps: FID within 15% of the teacher's 20 steps, class accuracy "
                            "within 2 points",
                            "measured": f"{result[key]} vs {flow20[key]} (ratio {result[key] / flow20[key]:.3f}); "
                                        f"accuracy {result['class_accuracy']} vs {flow20['class_accuracy']}",
                            "met": result[key] <= 1.15 * flow20[key]
                            and result["class_accuracy"] >= flow20["class_accuracy"] - 0.02})
        rows.append(row(handles["flow"], "digits-flow (undistilled)", "euler", 2, args.samples))
        results["distillation to 2 steps"] = distilled
    results["targets"] = targets
    plot(rows, args.plot)
    (args.out / "flow.json").write_text(json.dumps(results, indent=2))
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
