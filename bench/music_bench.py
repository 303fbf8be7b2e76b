"""Music, measured: a chorale model's held-out likelihood and its pieces' statistics beside the real chorales.

    python bench/music_bench.py [--run DIR] [--train-seconds 900] [--samples 40] [--out bench/out/music]
    python bench/music_bench.py --encodings grid,remi --train-seconds 300      # the two encodings side by side

For each encoding: the bach-chorales recipe trained for --train-seconds (or --run DIR for one), then
`MusicModel.evaluate`: held-out NLL per note and per sixteenth frame (comparable across encodings), the
statistics of --samples composed chorales (each in the key and of the length of a held-out chorale) beside
the held-out chorales, and the in-key share of the lower voices when harmonising held-out sopranos (grid).
A few pieces are written as .mid/.musicxml/.wav/.png to OUT/ENCODING/. Results go to OUT/music.json.
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
    parser.add_argument("--run", type=Path, help="a trained bach-chorales checkpoint (default: train one)")
    parser.add_argument("--encodings", default="grid", help="comma-separated: grid, remi")
    parser.add_argument("--train-seconds", type=int, default=900)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "music")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import genloom

    results = {"machine": cpu_name(), "runs": {}}
    for encoding in args.encodings.split(","):
        run = args.run
        if run is None:
            run = args.out / f"bach-{encoding}"
            subprocess.run([sys.executable, "-m", "genloom", "train", "bach-chorales", "--out", str(run), "--max-time",
                            str(args.train_seconds), "--set", f"data.encoding={encoding}"], check=True)
        model = genloom.load(run)
        started = time.perf_counter()
        result = model.evaluate(num_samples=args.samples, harmonise=args.samples)
        seconds = time.perf_counter() - started
        for piece in model.compose(num_samples=3, bars=8, seed=0):
            model.write(piece, args.out / model.encoding / piece.name)
        for piece in model.harmonize("heldout:0", seed=0) if model.encoding == "grid" else []:
            model.write(piece, args.out / model.encoding / piece.name)
        results["runs"][model.encoding] = {"run": str(run), **run_length(run), "eval_seconds": seconds,
                                           **result.to_json()}
        print(f"\n## {model.encoding}: {results['runs'][model.encoding]['steps']} steps in "
              f"{results['runs'][model.encoding]['train_seconds']:.0f} s\n")
        print(result.summary())
    (args.out / "music.json").write_text(json.dumps(results, indent=2))
    print(f"\nmachine: {results['machine']}")


if __name__ == "__main__":
    main()
