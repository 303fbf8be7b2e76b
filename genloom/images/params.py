"""An image's recipe: the parameters a generated PNG records (`genloom.media.image.save_png`) so that
`genloom generate image --like FILE.png` draws it again, pixel for pixel.

An image is one of a batch (labels or prompts, `num_samples` each, seeds from `seed`), and some samplers
(ddpm, ddim with eta > 0) draw their per-step noise for the batch as a whole, so the record keeps the batch
and the image's place in it: redrawing the batch on the same device and torch build gives the same pixels.
Besides the batch it keeps the checkpoint (its folder, and a fingerprint of its weights to tell when another
one is used), the adapter, every sampler setting with the recipe's defaults filled in, the init image and
mask (path and SHA-256), the enlargement, genloom's and torch's versions and the device.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import torch

from ..core.io import sha256_file
from ..nn.lora import base_tensors, weights_fingerprint

__all__ = ["generation_params", "weights_of", "file_record", "genloom_version"]


def genloom_version() -> str:
    try:
        return importlib.metadata.version("genloom")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def weights_of(handle) -> str:
    """A short fingerprint of the handle's base weights (adapters left out)."""
    return weights_fingerprint(base_tensors(handle.model))


def file_record(path: str | Path | None) -> dict[str, str] | None:
    """{"path", "sha256"} of an input file (init image, mask), or None."""
    if path is None:
        return None
    path = Path(path)
    return {"path": str(path.resolve()), "sha256": sha256_file(path)}


def generation_params(handle, *, checkpoint: str, batch: dict[str, Any], index: int, options: dict[str, Any],
                      scale: int, weights: str, adapter: str | None = None, model: str | None = None) -> dict[str, Any]:
    """What redraws image `index` of `batch` ({"labels" or "prompts": the list (labels None: unconditional),
    "num_samples", "seed"}); `options` are the sampler settings `generate` was given, defaults resolved."""
    group = index // batch["num_samples"]
    size = handle.image_size
    params: dict[str, Any] = {
        "genloom_version": genloom_version(), "torch": torch.__version__, "device": str(handle.device),
        "kind": handle.serves, "model": model, "checkpoint": checkpoint, "weights": weights, "adapter": adapter,
        "seed": batch["seed"] + index, "size": f"{size}x{size}", "scale": scale,
        "batch": {**batch, "index": index}, **options}
    if "prompts" in batch:
        params["prompt"] = batch["prompts"][group]
    else:
        params["label"] = None if batch.get("labels") is None else str(batch["labels"][group])
    return params
