"""diffusers-format `AutoencoderKL` folders (config.json + diffusion_pytorch_model.safetensors) as genloom
`Autoencoder`s, so a latent diffusion model can use e.g. the Stable Diffusion VAE.

genloom's autoencoder has diffusers' module layout, so most names map to themselves; what is mapped here:
the config (block_out_channels -> base_channels x channel_mults, in_channels -> channels, ...), the
attention names of folders saved by older diffusers (query/key/value/proj_attn -> to_q/to_k/to_v/to_out.0,
1x1-conv shaped weights squeezed to linear ones), and the checks that the folder holds a model genloom can
express (down/up block types, activation, the quant convs).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..core.errors import CheckpointError
from ..core.io import load_tensors
from .autoencoder import Autoencoder, AutoencoderConfig

__all__ = ["is_diffusers_folder", "diffusers_config", "load_diffusers_autoencoder", "map_diffusers_weights",
           "WEIGHTS_FILE"]

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
_RENAMED = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def is_diffusers_folder(folder: str | Path) -> bool:
    """Whether `folder/config.json` is a diffusers model config (it names a `_class_name`)."""
    path = Path(folder) / "config.json"
    try:
        return path.is_file() and "_class_name" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def diffusers_config(folder: str | Path) -> AutoencoderConfig:
    """The AutoencoderConfig of a diffusers AutoencoderKL folder; a folder of another class, or one using
    blocks genloom does not have, is refused in one line."""
    folder = Path(folder)
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot read the diffusers config ({error})") from None
    name = raw.get("_class_name")
    if name != "AutoencoderKL":
        raise CheckpointError(f"{folder} holds a diffusers {name!r}, not an AutoencoderKL; model.autoencoder takes "
                              "a genloom autoencoder run or a diffusers AutoencoderKL folder (e.g. the vae/ folder "
                              "of a Stable Diffusion model)")

    def refuse(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}; genloom's autoencoder cannot express it")

    down = raw.get("down_block_types", ["DownEncoderBlock2D"])
    up = raw.get("up_block_types", ["UpDecoderBlock2D"])
    widths = list(raw.get("block_out_channels", [64]))
    if any(t != "DownEncoderBlock2D" for t in down) or any(t != "UpDecoderBlock2D" for t in up):
        raise refuse(f"block types {sorted(set(down) | set(up))} (only DownEncoderBlock2D / UpDecoderBlock2D)")
    if not (len(down) == len(up) == len(widths)):
        raise refuse(f"{len(down)} down blocks, {len(up)} up blocks and {len(widths)} block_out_channels")
    if raw.get("act_fn", "silu") != "silu":
        raise refuse(f"act_fn {raw.get('act_fn')!r} (only silu)")
    if raw.get("in_channels", 3) != raw.get("out_channels", 3):
        raise refuse(f"in_channels {raw.get('in_channels')} != out_channels {raw.get('out_channels')}")
    quant, post_quant = raw.get("use_quant_conv", True), raw.get("use_post_quant_conv", True)
    if quant != post_quant:
        raise refuse(f"use_quant_conv={quant} but use_post_quant_conv={post_quant}")
    base = widths[0]
    if any(w % base for w in widths):
        raise refuse(f"block_out_channels {widths} that are not multiples of the first")
    return AutoencoderConfig(
        channels=int(raw.get("in_channels", 3)), base_channels=base, channel_mults=tuple(w // base for w in widths),
        layers_per_block=int(raw.get("layers_per_block", 1)), latent_channels=int(raw.get("latent_channels", 4)),
        norm_groups=int(raw.get("norm_num_groups", 32)), mid_attention=bool(raw.get("mid_block_add_attention", True)),
        quant_conv=bool(quant), scaling_factor=float(raw.get("scaling_factor") or 0.18215),
        shift_factor=float(raw.get("shift_factor") or 0.0))


def map_diffusers_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state-dict names -> genloom Autoencoder names."""
    mapped = {}
    for name, tensor in tensors.items():
        new = name
        if ".attentions." in name:
            for old, replacement in _RENAMED.items():
                new = new.replace(old, replacement)
            if tensor.dim() == 4 and name.endswith("weight") and tensor.shape[-2:] == (1, 1) \
                    and "group_norm" not in name:
                tensor = tensor[:, :, 0, 0]                    # attention weights saved as 1x1 convolutions
        mapped[new] = tensor
    return mapped


def load_diffusers_autoencoder(folder: str | Path, verify: bool = True) -> Autoencoder:
    """A genloom Autoencoder holding the weights of a diffusers AutoencoderKL folder (frozen, eval mode)."""
    folder = Path(folder)
    config = diffusers_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE} (genloom reads diffusers folders saved with "
                              "safe_serialization, the default)")
    model = Autoencoder(config)
    tensors = map_diffusers_weights(load_tensors(weights, verify=verify))
    tensors["latent_std"] = torch.tensor(1.0 / config.scaling_factor)
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in expected]
    problems += [f"{k}: shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
                 for k, v in tensors.items() if k in expected and v.shape != expected[k].shape]
    if problems:
        raise CheckpointError(f"{weights} does not fit the AutoencoderKL its config.json describes: "
                              + "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""))
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model.eval().requires_grad_(False)
