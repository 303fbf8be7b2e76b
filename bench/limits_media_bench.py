"""Issue 27 beyond text: a planted colour bias in text-to-image (with and without balanced captions) and the key
held by composed chorales, measured with `--task bias` and `--task consistency`.

Trains (or reuses, with --reuse) under --out: the scenes-colour-bias recipe (base), the same with
data.bias_mitigation = "balanced_captions", and bach-chorales (or give --music-run DIR); then evaluates them and
writes OUT/<task>-<run>.json and .png (--images DIR copies the plots there, e.g. docs/images). Each step is one
job (about 8, 8 and 15 minutes on 2 shared cores); on a shared machine run one at a time under the heavy-job lock:

    flock /tmp/genloom-heavy.lock nice -n 10 python bench/limits_media_bench.py --only bias
    flock /tmp/genloom-heavy.lock nice -n 10 python bench/limits_media_bench.py --only bias-balanced
    flock /tmp/genloom-heavy.lock nice -n 10 python bench/limits_media_bench.py --only music
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from genloom import api, load


def train(recipe: str, out: Path, max_time: float, reuse: bool, overrides=()) -> Path:
    if reuse and (out / "model.safetensors").is_file():
        return out
    started = time.time()
    api.train(recipe, out=out, overrides=list(overrides), max_time=max_time)
    print(f"{recipe} -> {out}: {time.time() - started:.0f} s", flush=True)
    return out


def evaluate(run: Path, task: str, out: Path, **options) -> dict:
    started = time.time()
    result = api.evaluate(load(run), task=task, progress=False, **options)
    report = out / f"{task}-{run.name}.json"
    report.write_text(json.dumps(result.to_json(), indent=2, default=float) + "\n")
    result.plot(report.with_suffix(".png"))
    print(result.summary(), f"\n({time.time() - started:.0f} s)", flush=True)
    return result.to_json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/out/limits-media"))
    parser.add_argument("--only", choices=("bias", "bias-balanced", "music", "all"), default="all",
                        help="which run (and its evaluation) to do")
    parser.add_argument("--bias-time", type=float, default=420, help="seconds per scenes-colour-bias run")
    parser.add_argument("--music-time", type=float, default=840, help="seconds of bach-chorales training")
    parser.add_argument("--music-run", type=Path, help="an existing music checkpoint instead of training one")
    parser.add_argument("--num-samples", type=int, default=200, help="--task bias: images per object")
    parser.add_argument("--pieces", type=int, default=20, help="--task consistency: composed pieces")
    parser.add_argument("--reuse", action="store_true", help="keep runs already in --out")
    parser.add_argument("--images", type=Path, help="copy the plots here (e.g. docs/images)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, overrides in (("bias", []), ("bias-balanced", ["data.bias_mitigation=balanced_captions"])):
        if args.only in (name, "all"):
            run = train("scenes-colour-bias", args.out / name, args.bias_time, args.reuse, overrides)
            evaluate(run, "bias", args.out, num_samples=args.num_samples, guidances=(1.0, 3.0))
    if args.only in ("music", "all"):
        run = args.music_run or train("bach-chorales", args.out / "bach", args.music_time, args.reuse)
        evaluate(run, "consistency", args.out, num_samples=args.pieces)
    if args.images:
        for plot in args.out.glob("*.png"):
            shutil.copy(plot, args.images / f"limits-media-{plot.name}")


if __name__ == "__main__":
    main()
