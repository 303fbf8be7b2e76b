"""Latent diffusion plumbing: opening the autoencoder a denoiser works in, caching a data set's latents once
(memory-mapped, resumable), and the codec the sampler uses to go between pixels and scaled latents.

`model.autoencoder = DIR` names either a genloom autoencoder run (`model.kind = "autoencoder"`), a diffusers
`AutoencoderKL` folder, or (inside a trained latent-diffusion checkpoint) the copy the run keeps beside its
weights as `autoencoder.json` + `autoencoder.safetensors`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import CheckpointError, ConfigError, GenloomError
from ..core.io import EMA_FILE, MODEL_FILE, load_tensors, recorded_sha256, save_tensors, sha256_file, write_json_atomic
from .autoencoder import Autoencoder, AutoencoderConfig
from .autoencoder_hf import WEIGHTS_FILE, is_diffusers_folder, load_diffusers_autoencoder

__all__ = ["open_autoencoder", "autoencoder_identity", "save_autoencoder_copy", "cached_latents", "LatentCodec",
           "attach_autoencoder", "latent_codec", "COPY_CONFIG", "COPY_WEIGHTS"]

log = logging.getLogger(__name__)

COPY_CONFIG, COPY_WEIGHTS = "autoencoder.json", "autoencoder.safetensors"


def _weights_of(folder: Path) -> Path:
    if (folder / COPY_CONFIG).is_file():
        return folder / COPY_WEIGHTS
    if is_diffusers_folder(folder):
        return folder / WEIGHTS_FILE
    return folder / EMA_FILE if (folder / EMA_FILE).is_file() else folder / MODEL_FILE


def open_autoencoder(path: str | Path, verify: bool = True) -> Autoencoder:
    """The frozen autoencoder in `path` (a genloom autoencoder run, a diffusers AutoencoderKL folder or a
    checkpoint's copy); opened once per process and file version. Anything else is refused in one line."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"model.autoencoder: {folder} is not a folder; train one first (genloom train "
                          f"glyphs64-autoencoder --out {folder}) or give a diffusers AutoencoderKL folder")
    weights = _weights_of(folder)
    version = weights.stat().st_mtime_ns if weights.is_file() else 0
    return _open(folder.resolve(), version, verify)


@functools.lru_cache(maxsize=8)
def _open(folder: Path, version: int, verify: bool) -> Autoencoder:
    """`open_autoencoder` once per folder and weights version (`version`: the weights' mtime)."""
    weights = _weights_of(folder)
    if (folder / COPY_CONFIG).is_file():
        saved = json.loads((folder / COPY_CONFIG).read_text(encoding="utf-8"))
        model = _genloom_autoencoder(AutoencoderConfig(**_tuples(saved["model"])), weights, verify)
    elif is_diffusers_folder(folder):
        model = load_diffusers_autoencoder(folder, verify=verify)
    elif (folder / "config.json").is_file():
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        kind = raw.get("model", {}).get("kind") if isinstance(raw, dict) else None
        if kind != "autoencoder":
            raise ConfigError(f"model.autoencoder: {folder} holds a {kind!r} model, not an autoencoder (train one "
                              "with model.kind = \"autoencoder\", e.g. the glyphs64-autoencoder recipe)")
        model = _genloom_autoencoder(AutoencoderConfig(**_tuples(raw["model"])), weights, verify)
    else:
        raise ConfigError(f"model.autoencoder: {folder} has no config.json; expected a genloom autoencoder run or a "
                          "diffusers AutoencoderKL folder")
    return model


def _tuples(values: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _genloom_autoencoder(config: AutoencoderConfig, weights: Path, verify: bool) -> Autoencoder:
    """A genloom autoencoder without its discriminator (only the autoencoder is needed for latents)."""
    config = dataclasses.replace(config, discriminator_channels=0)
    model = Autoencoder(config)
    tensors = {k: v for k, v in load_tensors(weights, verify=verify).items() if not k.startswith("discriminator.")}
    missing = sorted(set(model.state_dict()) - set(tensors))
    if missing:
        raise CheckpointError(f"{weights} does not fit its autoencoder config: missing {', '.join(missing[:3])}")
    model.load_state_dict({k: tensors[k].float() for k in model.state_dict()})
    return model.eval().requires_grad_(False)


def autoencoder_identity(path: str | Path) -> str:
    """What names an autoencoder's version for cache keys: its config and the SHA-256 of its weights."""
    folder = Path(path).expanduser()
    weights = _weights_of(folder)
    digest = recorded_sha256(weights) or sha256_file(weights)
    model = open_autoencoder(folder)
    return json.dumps({"config": dataclasses.asdict(model.config), "sha256": digest}, sort_keys=True)


def save_autoencoder_copy(model: Autoencoder, folder: Path) -> None:
    """Keep the autoencoder beside a latent-diffusion checkpoint, so it opens wherever the folder goes."""
    write_json_atomic(Path(folder) / COPY_CONFIG, {"model": dataclasses.asdict(model.config), "scale": model.scale})
    save_tensors(model.state_dict(), Path(folder) / COPY_WEIGHTS)


def cached_latents(folder: Path, count: int, shape: tuple[int, ...], encode: Callable[[int, int], torch.Tensor],
                   settings: dict, chunk: int = 64, progress: bool = True) -> np.ndarray:
    """Latents (count, *shape) float32, memory-mapped from `folder/latents.npy`, made by `encode(start, stop)`.

    Rows are encoded in fixed chunks [k * chunk, (k + 1) * chunk); after each, the array is flushed and then
    `progress.json` records how many rows are done, so an interrupted run resumes at the first unfinished
    chunk and, chunk boundaries being the same, ends with the same bytes as an uninterrupted one."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    array_path, state_path = folder / "latents.npy", folder / "progress.json"
    wanted = {"count": count, "shape": list(shape), "chunk": chunk, "settings": settings}
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    done = state.get("done", 0) if {k: state.get(k) for k in wanted} == wanted and array_path.is_file() else 0
    if done == count:
        return np.load(array_path, mmap_mode="r")
    if done:
        log.info("resuming the latent cache in %s at %d of %d images", folder, done, count)
        array = np.lib.format.open_memmap(array_path, mode="r+")
    else:
        array = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.float32, shape=(count, *shape))
    bar = tqdm(total=count, initial=done, unit="img", desc="encoding latents", disable=not progress, leave=False)
    for start in range(done, count, chunk):
        stop = min(count, start + chunk)
        array[start:stop] = encode(start, stop).float().cpu().numpy()
        array.flush()
        write_json_atomic(state_path, {**wanted, "done": stop})
        bar.update(stop - start)
    bar.close()
    del array
    return np.load(array_path, mmap_mode="r")


class LatentCodec:
    """Pixels in [-1, 1] <-> scaled latents for one autoencoder (the diffusion model sees scaled latents)."""

    def __init__(self, autoencoder: Autoencoder):
        self.autoencoder = autoencoder
        self.factor = autoencoder.config.downsampling
        self.channels = autoencoder.config.channels

    def _on(self, device: torch.device) -> Autoencoder:
        return self.autoencoder.to(device)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(N, C, H, W) -> scaled latent means (N, L, H/f, W/f)."""
        net = self._on(images.device)
        return torch.cat([net.to_latents(net.encode(images[i:i + batch_size].float())[0])
                          for i in range(0, len(images), batch_size)])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]."""
        net = self._on(latents.device)
        return torch.cat([net.decode(net.from_latents(latents[i:i + batch_size].float())).clamp(-1, 1)
                          for i in range(0, len(latents), batch_size)])

    def downsample_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A pixel mask (N, 1, H, W), 1 = redraw, -> the latent grid: a latent is redrawn when any pixel it
        covers is (max pooling), so the kept latents never carry masked content."""
        return F.max_pool2d(mask.float(), self.factor)

    def check_fits(self, model_config, where: str) -> None:
        """One line when the denoiser's channels do not match the autoencoder's latents."""
        latent = self.autoencoder.config.latent_channels
        if model_config.channels != latent:
            raise ConfigError(f"{where}: the denoiser takes {model_config.channels}-channel inputs but the "
                              f"autoencoder {model_config.autoencoder} makes {latent}-channel latents")


def attach_autoencoder(model: nn.Module, autoencoder: Autoencoder) -> None:
    """Give a latent denoiser the autoencoder its samples decode with (kept outside its state dict)."""
    object.__setattr__(model, "latent_autoencoder", autoencoder)


def latent_codec(model: nn.Module) -> LatentCodec | None:
    """The codec of a latent denoiser (`model.config.autoencoder` set), None for a pixel-space one. The
    autoencoder is the one attached to the model (a checkpoint's copy), else opened from the config's path."""
    path = getattr(model.config, "autoencoder", "")
    if not path:
        return None
    autoencoder = model.__dict__.get("latent_autoencoder")
    if autoencoder is None:
        try:
            autoencoder = open_autoencoder(path)
        except ConfigError as error:
            raise GenloomError(f"cannot decode this latent model's samples: {error}") from None
        attach_autoencoder(model, autoencoder)
    codec = LatentCodec(autoencoder)
    codec.check_fits(model.config, "model.autoencoder")
    return codec
