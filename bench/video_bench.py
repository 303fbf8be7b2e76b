"""Video, measured: a moving-digits model's clips scored offline, and sampling speed.

    python bench/video_bench.py [--run DIR] [--train-seconds 2640] [--samples 200] [--guidances 2,3]
                                [--out bench/out/video]

The moving-digits recipe trained for --train-seconds (or --run DIR), then `VideoModel.evaluate`: the share
of --samples clips (the 40 digit x direction classes in turn) showing the requested digit in every frame,
moving in the requested direction, FVD-digits against held-out clips (and real against real as the
floor), the continuation of held-out clips from their first 2 frames, and the frames between their first
2 and last frame — at each guidance scale of --guidances. A few clips are written as GIFs and frame strips
to OUT/. Results go to OUT/video.json.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a trained moving-digits checkpoint (default: train one)")
    parser.add_argument("--train-seconds", type=int, default=2640)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--guidances", default="", help="guidance scales to compare (default: the recipe's)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "video")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run = args.run
    if run is None:
        run = args.out / "moving-digits"
        subprocess.run([sys.executable, "-m", "genloom", "train", "moving-digits", "--out", str(run), "--max-time",
                        str(args.train_seconds)], check=True)
    import genloom

    model = genloom.load(run)
    started = time.perf_counter()
    clips = model.generate([f"the digit {d} moving {w}" for d in (0, 3, 7) for w in ("left", "right", "up", "down")],
                           seed=0)
    seconds_per_clip = (time.perf_counter() - started) / len(clips)
    model.save(clips, args.out / "clips")
    report = {"machine": cpu_name(), "run": str(run), **run_length(run), "seconds_per_clip": seconds_per_clip,
              "by_guidance": {}}
    print(f"{report['steps']} steps in {report['train_seconds']:.0f} s; {seconds_per_clip:.2f} s per clip "
          f"(20 DPM-Solver++ steps, guidance {model.config.objective.guidance:g})")
    scales = [float(g) for g in args.guidances.split(",")] if args.guidances else [model.config.objective.guidance]
    for guidance in scales:
        started = time.perf_counter()
        result = model.evaluate(num_samples=args.samples, guidance=guidance)
        report["by_guidance"][f"{guidance:g}"] = {"eval_seconds": time.perf_counter() - started, **result.to_json()}
        (args.out / "video.json").write_text(json.dumps(report, indent=2))
        print(f"\nguidance {guidance:g}:\n{result.summary()}")
    print(f"\nmachine: {report['machine']}")


if __name__ == "__main__":
    main()
