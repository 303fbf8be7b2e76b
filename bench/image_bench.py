"""Image-diffusion benchmark: quality against sampler steps, recognisability of classes, sampling speed.

    python bench/image_bench.py                          # train digits-diffusion (~10 min), then measure
    python bench/image_bench.py --checkpoint runs/DIR    # measure an existing checkpoint
    python bench/image_bench.py --samples 500            # fewer images per point (faster, noisier)

For every sampler and a range of steps it generates the same number of class-balanced images from the
same seeds and reports FID-digits (Fréchet distance on genloom's digits-classifier features; not the
standard FID), the fraction recognised as the requested class, and the wall time. Results go to
bench/out/image.json and are printed as Markdown.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from text_bench import cpu_name, markdown  # noqa: E402

STEPS = (5, 10, 20, 50)


def train(recipe: str, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "genloom", "train", recipe, "--out", str(out), "--set", "train.progress=false"],
                   check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="digits-diffusion")
    parser.add_argument("--checkpoint", type=Path, help="measure this run folder instead of training one")
    parser.add_argument("--samples", type=int, default=1000, help="generated images per table row")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the recipe's)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from genloom import load
    from genloom.diffusion.samplers import SAMPLERS, function_evaluations

    results: dict = {"machine": [{"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                                  "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}]}
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = Path(tempfile.mkdtemp(prefix="genloom-image-bench-")) / args.recipe
        seconds = train(args.recipe, checkpoint)
        state = json.loads((checkpoint / "train_state.json").read_text())
        results["training"] = [{"recipe": args.recipe, "wall_s": round(seconds, 1), "steps": state["step"],
                                "checkpoint": str(checkpoint)}]
        print(f"  trained {args.recipe}: {state['step']} steps in {seconds:.0f} s", flush=True)
    model = load(checkpoint)
    guidance = model.config.objective.guidance if args.guidance is None else args.guidance

    # Sampling speed: a 64-image grid (labels in turn) at 20 steps of the recipe's sampler.
    labels = [model.labels[i % len(model.labels)] for i in range(64)] if model.num_classes else None
    model.generate(labels[:2] if labels else None, num_samples=1, steps=2, seed=0)        # warm up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        if labels:
            model.generate(labels, num_samples=1, steps=20, seed=0, guidance=args.guidance)
        else:
            model.generate(None, num_samples=64, steps=20, seed=0, guidance=args.guidance)
        times.append(time.perf_counter() - start)
    results["sampling speed"] = [{"images": 64, "steps": 20, "sampler": model.config.objective.sampler,
                                  "guidance": guidance,
                                  "seconds_median_of_3": round(statistics.median(times), 3)}]
    print(f"  64-image grid at 20 steps: {statistics.median(times):.2f} s", flush=True)

    rows = []
    cases = [(s, n) for s in SAMPLERS for n in STEPS] + [("ddpm", 1000)]
    for sampler, steps in cases:
        start = time.perf_counter()
        result = model.evaluate(num_samples=args.samples, steps=steps, sampler=sampler, guidance=guidance,
                                progress=False)
        rows.append({"sampler": sampler, "steps": steps, "NFE": function_evaluations(sampler, steps),
                     result.fid_name: round(result.fid, 3), "KID": round(result.kid, 5),
                     "precision": round(result.precision, 3), "recall": round(result.recall, 3),
                     "class_accuracy": None if result.accuracy is None else round(result.accuracy, 4),
                     "seconds": round(time.perf_counter() - start, 1)})
        print(f"  {sampler} {steps} steps: {result.fid_name} {result.fid:.3f}, accuracy {result.accuracy}", flush=True)
    results["quality against function evaluations"] = rows
    reference = next(r for r in rows if r["sampler"] == "ddpm" and r["steps"] == 1000)
    fast = next(r for r in rows if r["sampler"] == "dpmpp_2m" and r["steps"] == 20)
    key = next(k for k in reference if k.startswith("FID-"))
    results["targets"] = [{
        "class_accuracy_dpmpp_2m_20": fast["class_accuracy"],
        f"{key}_dpmpp_2m_20": fast[key], f"{key}_ddpm_1000": reference[key],
        "ratio": round(fast[key] / reference[key], 3),
        "grid_64_seconds": results["sampling speed"][0]["seconds_median_of_3"],
    }]
    (args.out / "image.json").write_text(json.dumps(results, indent=2))
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
