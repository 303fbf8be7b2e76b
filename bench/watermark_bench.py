"""Watermark benchmark (issue 28's targets): detection at a 1% false-positive rate, robustness, cost.

    python bench/watermark_bench.py --only text --checkpoint runs/shakes [--items 1000]
    python bench/watermark_bench.py --only audio [--items 1000]
    python bench/watermark_bench.py --only image [--items 1000]
    python bench/watermark_bench.py --only learned-image [--seconds 300]

text: `items` samples of 200 tokens from the checkpoint (empty prompt, temperature 1, seed i) without a mark,
with the green scheme and with the gumbel scheme, all through `TextModel.complete` (batches of `--batch`).
Each scheme's detector scores its marked texts and the unmarked ones (the false positives), as generated
and after 20% of the tokens are replaced by uniformly random ones. Reported per scheme: the detection rate
and the false-positive rate at the detector's own threshold p < 0.01, the detection rate at the empirical
1%-false-positive threshold (the unmarked texts' 1st percentile of p), the median z, the perplexity of the
texts under the model (from each token's log-probability; the watermark's cost) and tokens/s against
unmarked decoding in the same run.

audio: `items` clips of espeak-ng speech (three digits, a random voice of genloom's spoken-digits set, 16
kHz, 1-2.5 s), each marked; marked and unmarked clips through the same edits (none, 16k -> 8k -> 16k, white
noise at 20 dB SNR, both, 8-bit mu-law, MP3 through libsndfile, cutting 0-20% off each end); reported as
for text, plus the mark's SNR.

tree-ring (an experiment, not a shipped mark): Tree-Ring (Wen et al. 2023) on a class-conditional
digits-diffusion checkpoint (8x8 pixels): the initial noise's centred Fourier coefficients within radius 2
(DC excluded) are set to keyed ring values, 50 DDIM steps draw the image, which is saved the way `generate
image` saves it (nearest-neighbour to 64 px, 8-bit), edited (JPEG quality 50, 0.75x resize, a 90% crop resized
back, Gaussian noise of 5/255), read back to 8x8 (area average) and inverted with 50 DDIM steps of the
unconditional model; the score is the mean distance of the ring's coefficients to the key's. Unmarked
images (the same seeds without the ring) give the false-positive threshold (their 1st percentile).

image: genloom's image mark (genloom/watermark/image.py) on `items` pictures of each built-in set as `genloom
generate image` saves them: builtin:digits (8x8, nearest-neighbour to 64x64), builtin:glyphs (32x32 on black,
to 64x64) and builtin:glyphs64 (64x64 on textured backgrounds), builtin:scenes (what the text-to-image recipes
draw: 32x32, to 64x64), plus the glyphs at 32x32 unscaled (the mark's minimum size). Each picture is marked at
38 dB PSNR; marked and unmarked pictures go through the same edits (none, JPEG quality 50, a 0.75x bicubic
resize, a 10% crop: a random 90%-of-each-side window, not resized back, Gaussian noise of sigma 5/255, all
four in a row: crop, resize, JPEG, noise, and a GIF's adaptive palette); reported as for audio, plus the PSNR
of marked vs unmarked and the detection time.

learned-image (an experiment, not a shipped mark): a HiDDeN-style encoder/decoder for a 32-bit message (the
encoder adds a one-channel residual, scaled to exactly 38 dB PSNR before clipping; the decoder pools to 32
logits), trained for `--seconds` with Adam (lr 2e-3, batch 16) on 1,000 pictures of each 64 px set, with one
noise layer a step drawn from: real JPEG quality 50 (straight-through gradient), a 0.75x bilinear resize, a
random 90% crop, Gaussian noise 5/255, none (no noise layers for the first 30% of the time). Scored on the
next 100 pictures of each set through the same edits as image: p-value = the binomial tail of the bits that
agree with the message.

filters: the server's moderation classifier (genloom/text/moderation.py) on builtin:safety's held-out
requests: harmful ones flagged, harmless ones passed, and the time to train it.

Results print as Markdown tables and go to bench/out/watermark.json.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY = "bench-key-2026"


def rates(marked_p: list[float], plain_p: list[float], alpha: float = 0.01) -> dict:
    """Detection and false-positive rates at p < alpha, and detection at the empirical alpha-FPR threshold."""
    threshold = float(np.quantile(plain_p, alpha))          # alpha of the unmarked items score below this
    return {"tpr": float(np.mean(np.array(marked_p) < alpha)), "fpr": float(np.mean(np.array(plain_p) < alpha)),
            "tpr_at_empirical_1pct": float(np.mean(np.array(marked_p) < threshold)),
            "empirical_threshold": threshold}


def replace_tokens(tokens: list[int], vocab: int, fraction: float, rng: np.random.Generator) -> list[int]:
    hit = rng.random(len(tokens)) < fraction
    return [int(rng.integers(vocab)) if h else t for t, h in zip(tokens, hit)]


def bench_text(checkpoint: Path, items: int, batch: int, length: int) -> dict:
    from tqdm import tqdm

    from genloom import load
    from genloom.watermark.text import TextWatermark

    model = load(checkpoint, device="cpu")
    vocab = model.tokenizer.vocab_size
    marks = {"none": None, "green": TextWatermark(KEY, "green"), "green delta 2": TextWatermark(KEY, "green", delta=2.0),
             "gumbel": TextWatermark(KEY, "gumbel")}
    texts: dict[str, list] = {name: [] for name in marks}
    seconds = {name: 0.0 for name in marks}
    for start in tqdm(range(0, items, batch), desc="generating", unit="batch"):
        for name, mark in marks.items():                      # interleaved, so load on the machine hits all alike
            begun = time.perf_counter()
            texts[name] += model.complete("", num_samples=min(batch, items - start), seed=start, temperature=1.0,
                                          max_new_tokens=length, watermark=mark)
            seconds[name] += time.perf_counter() - begun
    rng = np.random.default_rng(0)
    out = {"checkpoint": str(checkpoint), "items": items, "tokens": length, "vocab": vocab,
           "context": {k: m.context for k, m in marks.items() if m}, "schemes": {}}
    plain = texts["none"]
    out["perplexity_unmarked"] = math.exp(-statistics.fmean(lp for c in plain for lp in c.logprobs))
    out["tokens_per_s_unmarked"] = sum(len(c.tokens) for c in plain) / seconds["none"]
    for name in ("green", "green delta 2", "gumbel"):
        mark, marked = marks[name], texts[name]
        row = {"perplexity": math.exp(-statistics.fmean(lp for c in marked for lp in c.logprobs)),
               "tokens_per_s": sum(len(c.tokens) for c in marked) / seconds[name]}
        for edit, fraction in (("as generated", 0.0), ("20% replaced", 0.2)):
            got = [mark.detect(replace_tokens(c.tokens, vocab, fraction, rng)) for c in marked]
            null = [mark.detect(replace_tokens(c.tokens, vocab, fraction, rng)) for c in plain]
            row[edit] = {**rates([d.p_value for d in got], [d.p_value for d in null]),
                         "median_z": statistics.median(d.z for d in got),
                         "median_scored": statistics.median(d.scored for d in got)}
        out["schemes"][name] = row
    return out


def mu_law(wave: np.ndarray, mu: int = 255) -> np.ndarray:
    coded = np.round(np.sign(wave) * np.log1p(mu * np.abs(wave)) / np.log1p(mu) * 127) / 127
    return np.sign(coded) * np.expm1(np.abs(coded) * np.log1p(mu)) / mu


def noisy(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(len(wave))
    return wave + noise * np.sqrt(np.mean(wave.astype(np.float64) ** 2) / np.mean(noise**2) / 10 ** (snr_db / 10))


def mp3(wave: np.ndarray, rate: int) -> np.ndarray:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(wave, -1, 1), rate, format="MP3")
    buffer.seek(0)
    return soundfile.read(buffer, dtype="float32")[0][:len(wave)]


def bench_audio(items: int) -> dict:
    from tqdm import tqdm

    from genloom.audio.data import espeak_voices, speak
    from genloom.media.audio import resample
    from genloom.watermark.audio import AudioWatermark

    rate, mark = 16_000, AudioWatermark(KEY)
    rng = np.random.default_rng(0)
    voices = espeak_voices(60)
    digits = "zero one two three four five six seven eight nine".split()
    edits = {
        "none": lambda y: y,
        "resample 16k-8k-16k": lambda y: resample(resample(y, rate, 8000), 8000, rate),
        "noise 20 dB SNR": lambda y: noisy(y, 20, rng),
        "resample + noise 20 dB": lambda y: noisy(resample(resample(y, rate, 8000), 8000, rate), 20, rng),
        "8-bit mu-law": mu_law,
        "MP3 (libsndfile)": lambda y: mp3(y, rate),
        "cut 0-20% off each end": lambda y: y[int(rng.uniform(0, 0.2) * len(y)):len(y) - int(rng.uniform(0, 0.2) * len(y))],
    }
    p = {name: ([], []) for name in edits}
    snrs, seconds = [], []
    for i in tqdm(range(items), desc="clips", unit="clip"):
        voice = voices[i % len(voices)]
        clip = speak(" ".join(rng.choice(digits, 3)), voice, rate).astype(np.float32)
        clip = clip[:int(2.5 * rate)]
        seconds.append(len(clip) / rate)
        marked = mark.mark(clip, rate)
        snrs.append(10 * math.log10(np.sum(clip.astype(np.float64) ** 2) /
                                    np.sum((marked - clip).astype(np.float64) ** 2)))
        for name, edit in edits.items():
            p[name][0].append(mark.detect(edit(marked), rate).p_value)
            p[name][1].append(mark.detect(edit(clip), rate).p_value)
    return {"items": items, "seconds": [min(seconds), statistics.median(seconds), max(seconds)],
            "snr_db": [min(snrs), statistics.median(snrs)],
            "edits": {name: rates(*p[name]) for name in edits}}


def _ring(size: int, radius: float) -> "np.ndarray":
    """The centred Fourier positions within `radius` of the centre, DC excluded."""
    y, x = np.mgrid[:size, :size] - size // 2
    distance = np.sqrt(x**2 + y**2)
    return (distance <= radius) & (distance > 0)


def bench_tree_ring(checkpoint: Path, items: int, steps: int = 50) -> dict:
    import torch
    from PIL import Image
    from tqdm import tqdm

    from genloom import load
    from genloom.diffusion.samplers import sample, timesteps_for
    from genloom.diffusion.sampling import guided_denoiser
    from genloom.diffusion.schedules import split_prediction
    from genloom.watermark.keys import keyed_normal, subkey

    handle = load(checkpoint, device="cpu")
    net, schedule, cfg = handle.model, handle.schedule, handle.model.config
    size, channels = cfg.image_size, cfg.channels
    ring = torch.from_numpy(_ring(size, 2.0))
    # Tree-Ring's "rings": one keyed value per radius, so the key is rotation-invariant
    y, x = np.mgrid[:size, :size] - size // 2
    radii = np.round(np.sqrt(x**2 + y**2)).astype(int)
    values = keyed_normal(subkey(KEY.encode(), "image/tree-ring"), b"rings", size) * size
    key = torch.from_numpy(values[radii]).to(torch.complex64)

    def fourier(z):
        return torch.fft.fftshift(torch.fft.fft2(z), dim=(-2, -1))

    def marked_noise(noise):
        f = fourier(noise)
        f[..., ring] = key[ring]
        return torch.fft.ifft2(torch.fft.ifftshift(f, dim=(-2, -1))).real

    def invert(images):
        null = torch.full((images.shape[0],), handle.num_classes, dtype=torch.long)
        ts = timesteps_for(schedule, steps).flip(0).tolist()                     # ascending
        ac = schedule.alphas_cumprod
        z = images.clone()
        for i, t in enumerate(ts):
            ab_prev = ac[ts[i - 1]] if i > 0 else torch.tensor(1.0)
            level = ts[i - 1] if i > 0 else 0
            output = net(z, torch.full((z.shape[0],), level, dtype=torch.long), null)
            x0, eps = split_prediction(schedule.prediction, output, z, ab_prev ** 0.5, (1 - ab_prev) ** 0.5)
            z = ac[t] ** 0.5 * x0 + (1 - ac[t]) ** 0.5 * eps
        return z

    def save_and_edit(image, edit, rng):
        pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        picture = Image.fromarray(pixels[..., 0] if channels == 1 else pixels).resize((64, 64), Image.NEAREST)
        if edit == "JPEG q50":
            buffer = io.BytesIO()
            picture.save(buffer, "JPEG", quality=50)
            picture = Image.open(buffer)
        elif edit == "resize 0.75x":
            picture = picture.resize((48, 48), Image.BICUBIC)
        elif edit == "crop 10%":
            left, top = rng.integers(0, 7, 2)
            picture = picture.crop((left, top, left + 58, top + 58))
        elif edit == "noise 5/255":
            arr = np.asarray(picture, dtype=np.float64) + rng.normal(0, 5, np.asarray(picture).shape)
            picture = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))
        small = np.asarray(picture.resize((size, size), Image.BOX), dtype=np.float32) / 127.5 - 1
        small = small[None] if small.ndim == 2 else small.transpose(2, 0, 1)
        return torch.from_numpy(small)

    edits = ("none", "JPEG q50", "resize 0.75x", "crop 10%", "noise 5/255")
    scores = {e: ([], []) for e in edits}
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for start in tqdm(range(0, items, 50), desc="tree-ring", unit="batch"):
            rows = range(start, min(items, start + 50))
            noise = torch.stack([torch.randn((channels, size, size), generator=torch.Generator().manual_seed(i))
                                 for i in rows])
            labels = torch.tensor([i % handle.num_classes for i in rows]) if handle.num_classes else None
            denoise = guided_denoiser(net, labels, 1.0, handle.num_classes)
            for kind, start_noise in ((0, marked_noise(noise)), (1, noise)):
                images = sample(denoise, schedule, start_noise.shape, torch.Generator(), sampler="ddim", steps=steps,
                                x_T=start_noise)
                for edit in edits:
                    recovered = invert(torch.stack([save_and_edit(im, edit, rng) for im in images]))
                    distance = (fourier(recovered)[..., ring] - key[ring]).abs().mean(dim=(-1, -2))
                    scores[edit][kind].extend((-distance).tolist())     # higher = closer to the key
    out = {"checkpoint": str(checkpoint), "items": items, "steps": steps, "ring_coefficients": int(ring.sum()),
           "edits": {}}
    for edit in edits:
        marked, plain = np.array(scores[edit][0]), np.array(scores[edit][1])
        threshold = float(np.quantile(plain, 0.99))
        order = np.argsort(np.concatenate([marked, plain]))
        ranks = np.empty(len(order))
        ranks[order] = np.arange(len(order))
        auc = float((ranks[:len(marked)].sum() - len(marked) * (len(marked) - 1) / 2) / (len(marked) * len(plain)))
        out["edits"][edit] = {"tpr_at_empirical_1pct": float(np.mean(marked > threshold)), "auc": auc}
    return out


def image_edits(picture, rng: np.random.Generator) -> dict:
    """The benchmark's edits of one Pillow picture (RGB)."""
    from PIL import Image

    def jpeg(p):
        buffer = io.BytesIO()
        p.save(buffer, "JPEG", quality=50)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    def crop(p):
        w, h = p.size
        cw, ch = round(0.9 * w), round(0.9 * h)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return p.crop((left, top, left + cw, top + ch))

    def resize(p):
        return p.resize((round(0.75 * p.size[0]), round(0.75 * p.size[1])), Image.BICUBIC)

    def noise(p):
        a = np.asarray(p, dtype=np.float64) + rng.normal(0, 5, np.asarray(p).shape)
        return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))

    def gif(p):                           # Pillow's adaptive palette, as `generate variations` writes frames
        buffer = io.BytesIO()
        p.save(buffer, "GIF")
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return {"none": picture, "JPEG q50": jpeg(picture), "resize 0.75x": resize(picture), "crop 10%": crop(picture),
            "noise 5/255": noise(picture), "crop+resize+JPEG+noise": noise(jpeg(resize(crop(picture)))),
            "GIF (palette)": gif(picture)}


def image_sets(items: int, scenes: bool = False) -> dict:
    """{name: uint8 pictures (N, H, W, 3)} as `genloom generate image` saves each built-in set's images (and,
    with `scenes`, builtin:scenes' 32 px pictures, what the text-to-image recipes learn to draw, saved at 64 px)."""
    from sklearn.datasets import load_digits

    from genloom.images.data import render_glyphs

    digits = np.round(load_digits().images * (255 / 16)).astype(np.uint8)
    digits = np.repeat(digits[np.arange(items) % len(digits)][..., None], 3, axis=3)
    glyphs = render_glyphs(items, 7, 32)[0]
    sets = {"digits 8x8 -> 64 px": digits.repeat(8, 1).repeat(8, 2), "glyphs 32 -> 64 px": glyphs.repeat(2, 1).repeat(2, 2),
            "glyphs64 (textured) 64 px": render_glyphs(items, 7, 64, True)[0]}
    if scenes:
        from genloom.text_to_image.scenes import random_scenes, render_scenes

        sets["scenes 32 -> 64 px (text-to-image data)"] = render_scenes(random_scenes(items, 7)).repeat(2, 1).repeat(2, 2)
    sets["glyphs 32 px (unscaled)"] = glyphs
    return sets


def bench_image(items: int, save=None) -> dict:
    """The image part; `save(partial)` runs after each picture set (a run cut short keeps the sets it did)."""
    from PIL import Image
    from tqdm import tqdm

    from genloom.watermark.image import ImageWatermark

    mark = ImageWatermark(KEY)
    out = {"items": items, "sets": {}}
    for name, pictures in image_sets(items, scenes=True).items():
        rng = np.random.default_rng(0)
        p_values, psnr, seconds, count = {}, [], 0.0, 0
        for pixels in tqdm(pictures, desc=f"image: {name}", unit="picture"):
            picture = Image.fromarray(pixels)
            marked = mark.mark(picture)
            psnr.append(10 * math.log10(255.0 ** 2 / np.mean((np.asarray(marked, np.float64) - pixels) ** 2)))
            for kind, source in ((0, marked), (1, picture)):
                for edit, edited in image_edits(source, rng).items():
                    start = time.perf_counter()
                    p_values.setdefault(edit, ([], []))[kind].append(mark.detect(edited).p_value)
                    seconds, count = seconds + time.perf_counter() - start, count + 1
        out["sets"][name] = {"size": list(pictures.shape[1:3]), "psnr_db": [float(np.min(psnr)), float(np.median(psnr))],
                             "detect_ms": 1000 * seconds / count,
                             "edits": {e: rates(*v) for e, v in p_values.items()}}
        if save is not None:
            save(out)
    return out


def bench_learned_image(seconds: float, bits: int = 32) -> dict:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from PIL import Image
    from scipy.stats import binom

    torch.manual_seed(0)
    rms = 255 / 10 ** (38 / 20) / 127.5                      # 38 dB PSNR in [-1, 1] units
    sets = {k: v for k, v in image_sets(1100).items() if "unscaled" not in k}
    train = torch.from_numpy(np.concatenate([v[:1000] for v in sets.values()])).permute(0, 3, 1, 2).float() / 127.5 - 1

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                                          nn.ReLU())
            self.message = nn.Linear(bits, 32 * 16)
            self.out = nn.Sequential(nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 3, padding=1))

        def forward(self, x, m):
            q = F.interpolate(self.message(m).view(-1, 32, 4, 4), size=x.shape[-2:], mode="bilinear")
            r = self.out(torch.cat([self.features(x), q], 1))
            r = r - r.mean((2, 3), keepdim=True)
            return (x + r * rms / (r.pow(2).mean((1, 2, 3), keepdim=True).sqrt() + 1e-8)).clamp(-1, 1)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(64, bits)

        def forward(self, x):
            return self.head(self.body(x).mean((2, 3)))

    def jpeg(x):                                              # real JPEG forward, identity backward
        with torch.no_grad():
            out = []
            for pixels in ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy():
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, "JPEG", quality=50)
                out.append(np.array(Image.open(buffer).convert("RGB")))
            y = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return x + (y - x).detach()

    def noise_layer(x, rng):
        k = rng.integers(5)
        if k == 0:
            return jpeg(x)
        if k == 1:
            return F.interpolate(x, scale_factor=0.75, mode="bilinear", antialias=True)
        if k == 2:
            c = round(0.9 * x.shape[-1])
            i, j = rng.integers(0, x.shape[-1] - c + 1, 2)
            return x[..., i:i + c, j:j + c]
        return x + torch.randn_like(x) * 5 / 127.5 if k == 3 else x

    encoder, decoder = Encoder(), Decoder()
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], 2e-3)
    rng, start, steps, losses = np.random.default_rng(0), time.time(), 0, []
    while time.time() - start < seconds:
        x = train[torch.from_numpy(rng.integers(0, len(train), 16))]
        m = torch.randint(0, 2, (16, bits)).float()
        y = encoder(x, m)
        y = noise_layer(y, rng) if time.time() - start > 0.3 * seconds else y
        loss = F.binary_cross_entropy_with_logits(decoder(y), m)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps, losses = steps + 1, losses + [loss.item()]
    out = {"seconds": seconds, "steps": steps, "final_loss": float(np.mean(losses[-100:])), "bits": bits, "sets": {}}
    message = torch.randint(0, 2, (1, bits), generator=torch.Generator().manual_seed(1)).float()
    encoder.eval(), decoder.eval()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for name, pictures in sets.items():
            p_values, psnr = {}, []
            for pixels in pictures[1000:1100]:
                x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
                marked = ((encoder(x, message)[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
                psnr.append(10 * math.log10(255.0 ** 2 / np.mean((marked.astype(np.float64) - pixels) ** 2)))
                for kind, source in ((0, marked), (1, pixels)):
                    for edit, edited in image_edits(Image.fromarray(source), rng).items():
                        t = torch.from_numpy(np.array(edited.convert("RGB"))).permute(2, 0, 1)[None].float() / 127.5 - 1
                        agree = int(((decoder(t)[0] > 0).float() == message[0]).sum())
                        p_values.setdefault(edit, ([], []))[kind].append(float(binom.sf(agree - 1, bits, 0.5)))
            out["sets"][name] = {"psnr_db": [float(np.min(psnr)), float(np.median(psnr))],
                                 "edits": {e: rates(*v) for e, v in p_values.items()}}
    return out


def bench_filters() -> dict:
    from genloom.text.moderation import train_safety_classifier
    from genloom.text.safety import safety_eval_prompts

    begun = time.perf_counter()
    model = train_safety_classifier()          # trained here, not read from the cache
    seconds = time.perf_counter() - begun
    held = safety_eval_prompts()
    harmful, harmless = model.score(held["harmful"]), model.score(held["harmless"])
    return {"train_seconds": seconds, "harmful": len(harmful), "flagged": sum(s >= 0.5 for s in harmful),
            "harmless": len(harmless), "passed": sum(s < 0.5 for s in harmless)}


def image_table(sets: dict) -> list[str]:
    """Markdown rows: detection of each picture set under each edit (the image and learned-image parts)."""
    rows = ["| pictures | edit | detected at p<0.01 | false positives | detected at empirical 1% FPR |",
            "|---|---|---|---|---|"]
    for name, s in sets.items():
        rows += [f"| {name} | {edit} | {100 * e['tpr']:.1f}% | {100 * e['fpr']:.1f}% | "
                 f"{100 * e['tpr_at_empirical_1pct']:.1f}% |" for edit, e in s["edits"].items()]
    return rows


def markdown(results: dict) -> str:
    lines = []
    if "text" in results:
        t = results["text"]
        lines += [f"Text ({t['items']} samples of {t['tokens']} tokens per cell, vocabulary {t['vocab']}, unmarked "
                  f"perplexity {t['perplexity_unmarked']:.2f}, {t['tokens_per_s_unmarked']:.0f} tokens/s):", "",
                  "| scheme | edit | detected at p<0.01 | false positives | detected at empirical 1% FPR | median z "
                  "| perplexity | tokens/s vs unmarked |", "|---|---|---|---|---|---|---|---|"]
        for name, row in t["schemes"].items():
            for edit in ("as generated", "20% replaced"):
                r = row[edit]
                lines.append(f"| {name} (h={t['context'][name]}) | {edit} | {100 * r['tpr']:.1f}% | "
                             f"{100 * r['fpr']:.1f}% | {100 * r['tpr_at_empirical_1pct']:.1f}% | {r['median_z']:.1f} | "
                             f"{row['perplexity']:.2f} | {row['tokens_per_s'] / t['tokens_per_s_unmarked']:.2f}x |")
        lines.append("")
    if "tree-ring" in results:
        r = results["tree-ring"]
        lines += [f"Tree-Ring experiment on {r['checkpoint']} ({r['items']} marked and {r['items']} unmarked images, "
                  f"{r['ring_coefficients']} ring coefficients, {r['steps']} DDIM steps each way):", "",
                  "| edit | detected at empirical 1% FPR | AUC |", "|---|---|---|"]
        for name, e in r["edits"].items():
            lines.append(f"| {name} | {100 * e['tpr_at_empirical_1pct']:.1f}% | {e['auc']:.3f} |")
        lines.append("")
    if "image" in results:
        r = results["image"]
        lines += [f"Images ({r['items']} pictures per set and cell, marked at 38 dB PSNR):", "",
                  *image_table(r["sets"]), ""]
        lines += [f"- {name}: PSNR min {s['psnr_db'][0]:.2f} dB, median {s['psnr_db'][1]:.2f} dB; detection "
                  f"{s['detect_ms']:.1f} ms a picture" for name, s in r["sets"].items()]
        lines.append("")
    if "learned-image" in results:
        r = results["learned-image"]
        lines += [f"Learned image mark experiment ({r['bits']} bits, trained {r['seconds']:.0f} s = {r['steps']} steps, "
                  f"final bit loss {r['final_loss']:.3f}; 100 pictures per set and cell):", "",
                  *image_table(r["sets"])]
        lines += [""] + [f"- {name}: PSNR min {s['psnr_db'][0]:.2f} dB, median {s['psnr_db'][1]:.2f} dB"
                         for name, s in r["sets"].items()] + [""]
    if "filters" in results:
        f = results["filters"]
        lines += [f"Moderation classifier on builtin:safety's held-out requests: {f['flagged']}/{f['harmful']} harmful "
                  f"flagged, {f['passed']}/{f['harmless']} harmless passed (trained in {f['train_seconds']:.1f} s).", ""]
    if "audio" in results:
        a = results["audio"]
        lines += [f"Audio ({a['items']} espeak-ng clips of {a['seconds'][0]:.1f}-{a['seconds'][2]:.1f} s, median "
                  f"{a['seconds'][1]:.1f} s; mark SNR min {a['snr_db'][0]:.1f} dB, median {a['snr_db'][1]:.1f} dB):", "",
                  "| edit | detected at p<0.01 | false positives | detected at empirical 1% FPR |", "|---|---|---|---|"]
        for name, r in a["edits"].items():
            lines.append(f"| {name} | {100 * r['tpr']:.1f}% | {100 * r['fpr']:.1f}% | "
                         f"{100 * r['tpr_at_empirical_1pct']:.1f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("text", "audio", "image", "learned-image", "tree-ring", "filters"),
                        action="append")
    parser.add_argument("--seconds", type=float, default=300, help="learned-image: training time")
    parser.add_argument("--checkpoint", type=Path, help="a text checkpoint (the text part) or a digits-diffusion "
                        "one (tree-ring)")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    parts = args.only or ["text", "audio", "filters"]
    out_path = ROOT / "bench" / "out" / "watermark.json"
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if "text" in parts:
        if args.checkpoint is None:
            parser.error("the text part needs --checkpoint (a text model, e.g. a genloom quickstart run)")
        results["text"] = bench_text(args.checkpoint, args.items, args.batch, args.tokens)
    if "audio" in parts:
        results["audio"] = bench_audio(args.items)
    if "filters" in parts:
        results["filters"] = bench_filters()
    if "image" in parts:
        def save(partial: dict) -> None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps({**results, "image": partial}, indent=1))

        results["image"] = bench_image(args.items, save)
    if "learned-image" in parts:
        results["learned-image"] = bench_learned_image(args.seconds)
    if "tree-ring" in parts:
        if args.checkpoint is None:
            parser.error("the tree-ring part needs --checkpoint (a digits-diffusion run)")
        results["tree-ring"] = bench_tree_ring(args.checkpoint, args.items)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()
