"""GAN against diffusion on the same images with the same metrics.

    python bench/gan_bench.py --pair digits runs/digits-gan runs/digits-diffusion \
                              --pair glyphs runs/glyphs-gan runs/glyphs-diffusion --samples 1000

Each pair is a data-set name, a GAN checkpoint and a diffusion checkpoint trained on that data (train
them first, e.g. `genloom train digits-gan --out runs/digits-gan`, ~10 minutes each). For each model
it reports FID-<data> and KID on genloom's feature classifier, k-NN precision/recall, class accuracy
(all from `genloom eval`'s code path, the same seeds), the training wall time and steps recorded in the
checkpoint, and sampling throughput: images per second for a batch of 256 (the diffusion model at 20
steps of its recipe's sampler). Results go to bench/out/gan.json and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from text_bench import cpu_name, markdown  # noqa: E402


def images_per_second(model, labels, batch: int = 256, repeats: int = 3) -> float:
    """Median throughput of generating `batch` images (classes in turn)."""
    requests = [labels[i % len(labels)] for i in range(batch)] if labels else None
    options = {} if _is_gan(model) else {"steps": 20}                     # a GAN has no sampler steps

    def once():
        return model.generate(requests, num_samples=1, seed=0, **options) if requests else \
            model.generate(None, num_samples=batch, seed=0, **options)

    once()                                                                      # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def _is_gan(model) -> bool:
    from genloom import GANModel

    return isinstance(model, GANModel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", nargs=3, action="append", metavar=("DATA", "GAN_DIR", "DIFFUSION_DIR"),
                        required=True, help="a data-set name and the two checkpoints trained on it")
    parser.add_argument("--samples", type=int, default=1000, help="generated images per model")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from genloom import load

    results: dict = {"machine": [{"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                                  "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}]}
    rows = []
    for data_name, gan_dir, diffusion_dir in args.pair:
        speeds = {}
        for family, folder in (("GAN", gan_dir), ("diffusion", diffusion_dir)):
            model = load(folder)
            state = json.loads((Path(folder) / "train_state.json").read_text())
            result = model.evaluate(num_samples=args.samples, progress=False)
            speeds[family] = images_per_second(model, model.labels if model.num_classes else None)
            sampler = "1 pass" if family == "GAN" else f"{model.config.objective.sampler} 20"
            rows.append({"data": data_name, "model": f"{family} ({model.config.recipe or model.config.model.kind})",
                         "sampling": sampler, "FID": round(result.fid, 3), "KID": round(result.kid, 5),
                         "precision": round(result.precision, 3), "recall": round(result.recall, 3),
                         "class_accuracy": None if result.accuracy is None else round(result.accuracy, 3),
                         "train_s": round(state["elapsed"]), "steps": state["step"],
                         "images_per_s": round(speeds[family], 1)})
            print(f"  {data_name} {family}: {result.fid_name} {result.fid:.3f}, accuracy {result.accuracy}, "
                  f"{speeds[family]:.0f} images/s", flush=True)
        rows[-2]["images_per_s_ratio"] = round(speeds["GAN"] / speeds["diffusion"], 1)
        rows[-1]["images_per_s_ratio"] = 1.0
        rows[-2]["FID_ratio"] = round(rows[-2]["FID"] / rows[-1]["FID"], 2)
        rows[-1]["FID_ratio"] = 1.0
    results["GAN vs diffusion"] = rows
    (args.out / "gan.json").write_text(json.dumps(results, indent=2))
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
