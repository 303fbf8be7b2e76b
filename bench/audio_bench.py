"""Audio, measured: spoken digits (with voice cloning) and sound effects scored offline, and the vocoder.

    python bench/audio_bench.py [--run DIR] [--sfx-run DIR] [--train-seconds 1800] [--sfx-seconds 900]
                                [--samples 200] [--voice-trials 120] [--out bench/out/audio]

The spoken-digits and sound-effects recipes trained for the given seconds (or --run / --sfx-run DIR), then
`AudioModel.evaluate`: the share of --samples generated clips (the classes in turn; the digits in the 12
held-out voices, each from a reference clip of three other words) that the audio classifier recognises after
the vocoder, FAD-genloom, and the voice-cloning trials. The vocoders are measured on held-out real clips:
log-mel distance, spectral convergence and classifier accuracy after 16/32/64/128 Griffin-Lim iterations and
through the neural vocoder (the run's, or one of --vocoder-steps trained for the data and cached). Example
WAVs and spectrograms go to OUT/; results to OUT/audio.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from text_bench import cpu_name, run_length  # noqa: E402


def train(recipe: str, out: Path, seconds: int) -> Path:
    subprocess.run([sys.executable, "-m", "genloom", "train", recipe, "--out", str(out), "--max-time", str(seconds)],
                   check=True)
    return out


def vocoder_table(model, data, classifier, vocoder=None) -> list[dict]:
    """Griffin-Lim at 16-128 iterations and the neural vocoder on 128 held-out real clips: the log-mel distance of
    the sound made to the picture it was made from, the spectral convergence against the real clip's STFT, and
    the classifier's accuracy on the sound made."""
    import torch

    val = data.split_ids("val")[:128]
    pictures, labels = data.pictures[val], data.labels[val]
    real = torch.from_numpy(data.waves[val.numpy()])
    window = torch.hann_window(model.mel.n_fft)

    def measure(name: str, make) -> dict:
        started = time.perf_counter()
        with torch.no_grad():
            waves = make()
        seconds = (time.perf_counter() - started) / len(val)
        with torch.no_grad():
            again = model.mel(waves)
            a = torch.stft(waves, model.mel.n_fft, model.mel.hop_length, window=window, return_complex=True).abs()
            b = torch.stft(real, model.mel.n_fft, model.mel.hop_length, window=window, return_complex=True).abs()
            accuracy = float((classifier(again).argmax(-1) == labels).float().mean())
        return {"vocoder": name, "mel_l1": float((again - pictures).abs().mean()),
                "spectral_convergence": float((a - b).norm() / b.norm()), "accuracy": accuracy,
                "seconds_per_clip": seconds}

    rows = [measure(f"Griffin-Lim {n}", lambda n=n: model.mel.invert(pictures, n)) for n in (16, 32, 64, 128)]
    if vocoder is not None:
        rows.append(measure("neural", lambda: torch.cat([vocoder(pictures[i:i + 64]) for i in range(0, len(val), 64)])))
    return rows


def examples(model, data, out: Path) -> None:
    """Each digit in two held-out voices, beside the reference clips they were given."""
    import numpy as np

    from genloom.audio.data import WORDS
    from genloom.audio.handle import _trimmed
    from genloom.media.audio import write_wav

    cfg = data.config
    for v in (cfg.voices - cfg.held_out_voices, cfg.voices - 1):
        spare = [i for i in np.flatnonzero(data.speakers.numpy() == v) if WORDS[int(data.word_ids[i])]
                 not in model.classes][:3]
        reference = np.concatenate([_trimmed(data.waves[i], model.sample_rate) for i in spare])
        write_wav(out / f"voice{v}_reference.wav", reference, model.sample_rate)
        waves, pictures = model.generate(model.classes, seed=0, voice=reference)
        model.save(waves, pictures, out, prefix=f"voice{v}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a trained spoken-digits checkpoint (default: train one)")
    parser.add_argument("--sfx-run", type=Path, help="a trained sound-effects checkpoint (default: train one)")
    parser.add_argument("--train-seconds", type=int, default=1800)
    parser.add_argument("--sfx-seconds", type=int, default=900)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--voice-trials", type=int, default=120)
    parser.add_argument("--vocoder-steps", type=int, default=2000,
                        help="train a neural vocoder of this many steps (cached) for a run without one; 0: none")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: words, sfx")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "audio")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import genloom
    from genloom.audio.data import AudioData
    from genloom.audio.eval import audio_classifier

    report_file = args.out / "audio.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    report["machine"] = cpu_name()
    skip = set(filter(None, args.skip.split(",")))
    for part, recipe, run, seconds in (("words", "spoken-digits", args.run, args.train_seconds),
                                       ("sfx", "sound-effects", args.sfx_run, args.sfx_seconds)):
        if part in skip:
            continue
        run = run or train(recipe, args.out / recipe, seconds)
        model = genloom.load(run)
        settings = model.config.data
        if model.vocoder is None and args.vocoder_steps:
            settings = dataclasses.replace(settings, vocoder_steps=args.vocoder_steps)
        data = AudioData(settings)
        data.prepare()
        vocoder = model.vocoder or data.vocoder
        started = time.perf_counter()
        waves, pictures = model.generate(model.classes[:8], seed=0)
        seconds_per_clip = (time.perf_counter() - started) / len(waves)
        if part == "words":
            examples(model, data, args.out / "spoken")
        else:
            model.save(waves, pictures, args.out / "sfx", prefix="sound")
        started = time.perf_counter()
        result = model.evaluate(num_samples=args.samples, voice_trials=args.voice_trials)
        report[part] = {"run": str(run), **run_length(run), "seconds_per_clip": seconds_per_clip,
                        "eval_seconds": time.perf_counter() - started, **result.to_json(),
                        "vocoders": vocoder_table(model, data, audio_classifier(data), vocoder)}
        report_file.write_text(json.dumps(report, indent=2))
        print(f"\n{recipe}: {report[part]['steps']} steps in {report[part]['train_seconds']:.0f} s; "
              f"{seconds_per_clip:.2f} s per clip (20 DPM-Solver++ steps, guidance "
              f"{model.config.objective.guidance:g}, Griffin-Lim {model.config.objective.vocoder_iterations})")
        print(result.summary())
        for row in report[part]["vocoders"]:
            print(f"  {row['vocoder']:>15}: log-mel distance {row['mel_l1']:.4f}, spectral convergence "
                  f"{row['spectral_convergence']:.3f}, classifier {100 * row['accuracy']:.1f}%, "
                  f"{1000 * row['seconds_per_clip']:.1f} ms per clip")
    print(f"\nmachine: {report['machine']}")


if __name__ == "__main__":
    main()
