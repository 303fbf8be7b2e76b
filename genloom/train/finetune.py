"""Starting a run from a trained checkpoint: full fine-tuning (some parts frozen) or LoRA adapters.

A LoRA run's folder holds the adapter alone (`adapter.safetensors` + `adapter.json`) with its own
small train state, never a copy of the base weights. `adapter.json` names the base checkpoint and a
fingerprint of its weights, so an adapter is never applied to a model it was not trained on.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import io as ckpt
from ..core import registry
from ..core.config import RunConfig, read_json
from ..core.errors import CheckpointError, ConfigError
from ..nn.lora import (
    adapter_tensors,
    add_adapter,
    load_adapter_tensors,
    use_adapter,
    weights_fingerprint,
)

__all__ = ["ADAPTER_FILE", "ADAPTER_JSON", "ADAPTER_FORMAT", "TRAINING_ADAPTER", "base_weights_file", "start_from_base", "adapter_payload", "adapter_metadata", "read_adapter", "attach_adapter", "is_adapter_dir", "copy_assets", "fold_new_words", "data_assets"]

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_JSON = "adapter.json"
ADAPTER_FORMAT = "genloom-adapter-1"
TRAINING_ADAPTER = "default"        # the adapter's name inside the model while it trains




def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / ADAPTER_JSON).is_file() and not (Path(path) / ckpt.MODEL_FILE).is_file()


def base_weights_file(base: Path, which: str = "ema") -> Path:
    """The weights fine-tuning starts from: the base's average where it kept one (and `which` is ema)."""
    base = Path(base)
    if not base.is_dir():
        raise CheckpointError(f"finetune.base: {base} is not a directory (expected a genloom checkpoint)")
    if is_adapter_dir(base):
        raise CheckpointError(f"finetune.base: {base} holds an adapter, not a full model; fold it into its base "
                              f"first: genloom merge --base BASE --adapter {base} --out MERGED")
    ckpt.recover(base)
    for name in (ckpt.CONFIG_FILE, ckpt.MODEL_FILE):
        if not (base / name).is_file():
            raise CheckpointError(f"finetune.base: {base} is missing {name}; is it a genloom checkpoint directory?")
    if which == "ema" and (base / ckpt.EMA_FILE).is_file():
        return base / ckpt.EMA_FILE
    return base / ckpt.MODEL_FILE


def _matching(model: nn.Module, patterns: tuple[str, ...], key: str) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    unused = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unused:
        shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
        raise ConfigError(f"{key}: {unused[0]!r} matches no parameter; parameters are named like: {shown}")
    return chosen


def start_from_base(model: nn.Module, config) -> dict[str, Any]:
    """Load the base weights into `model`, then freeze parts of it (full) or add a trainable adapter
    (lora). Returns what adapter.json records about the base."""
    ft = config.finetune
    weights = base_weights_file(Path(ft.base), ft.weights)
    ckpt.load_weights(model, weights)
    fingerprint = weights_fingerprint(model.state_dict())
    info: dict[str, Any] = {"base": str(Path(ft.base).resolve()), "base_weights": weights.name,
                            "base_fingerprint": fingerprint}
    if ft.method == "full":
        frozen = set(_matching(model, ft.freeze, "finetune.freeze"))
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name not in frozen)
        if frozen and len(frozen) == len(list(model.parameters())):
            raise ConfigError("finetune.freeze: every parameter is frozen; nothing would train")
        info["frozen"] = sorted(frozen)
        return info
    model.requires_grad_(False)
    info["targets"] = add_adapter(model, TRAINING_ADAPTER, ft.lora_targets, ft.lora_rank, ft.lora_alpha,
                                  ft.lora_dropout)
    use_adapter(model, TRAINING_ADAPTER)
    also = _matching(model, ft.train_also, "finetune.train_also")
    if ft.new_words:
        from ..nn.text_encoders import grow_vocabulary

        also.append(grow_vocabulary(model, len(ft.new_words)))
        info["new_words"] = list(ft.new_words)
    for name, parameter in model.named_parameters():
        if name in also:
            parameter.requires_grad_(True)
    info["train_also"] = also
    return info


def adapter_payload(model: nn.Module, info: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors an adapter file holds: its low-rank matrices and any parameters trained in full."""
    tensors = dict(adapter_tensors(model, TRAINING_ADAPTER))
    parameters = dict(model.named_parameters())
    for name in info.get("train_also", []):
        tensors[name] = parameters[name]
    return tensors


def adapter_metadata(config, info: dict[str, Any], step: int) -> dict[str, Any]:
    ft = config.finetune
    return {"format": ADAPTER_FORMAT, **info, "model": json.loads(config.to_json())["model"],
            "rank": ft.lora_rank, "alpha": ft.lora_alpha, "dropout": ft.lora_dropout,
            "recipe": config.recipe, "step": step}


def read_adapter(path: Path) -> dict[str, Any]:
    """An adapter folder's metadata (adapter.json), checked; the tensors are read where they are used."""
    path = Path(path)
    ckpt.recover(path)
    meta_path = path / ADAPTER_JSON
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not an adapter folder (it has no {ADAPTER_JSON}; adapters are written by "
                              "genloom finetune with finetune.method = \"lora\")")
    meta = read_json(meta_path, "adapter metadata")
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{meta_path}: not a genloom adapter (format {found!r}, expected {ADAPTER_FORMAT!r})")
    return meta


def attach_adapter(model: nn.Module, model_config: dict[str, Any], fingerprint: str, path: Path, name: str,
                   base_label: str, verify: bool = True) -> dict[str, Any]:
    """Add the adapter saved in `path` to `model` under `name`, after checking it was trained on this base."""
    meta = read_adapter(path)
    tensors = ckpt.load_tensors(Path(path) / ADAPTER_FILE, verify=verify)
    if meta.get("model") != model_config:
        differences = [f"model.{k}: adapter's base {meta.get('model', {}).get(k)!r}, this model {v!r}"
                       for k, v in model_config.items() if meta.get("model", {}).get(k) != v]
        raise CheckpointError(f"the adapter {path} was trained on another kind of model than {base_label}: "
                              + "; ".join(differences[:4]))
    if meta.get("base_fingerprint") != fingerprint:
        raise CheckpointError(f"the adapter {path} was trained on the base model {meta.get('base')} "
                              f"(weights {meta.get('base_fingerprint')}), not on {base_label} (weights {fingerprint}); "
                              "an adapter only works with the exact weights it was trained on")
    add_adapter(model, name, [f"{t}" for t in meta.get("targets", [])] or ["<none>"], int(meta["rank"]),
                float(meta["alpha"]), 0.0)
    load_adapter_tensors(model, name, tensors, str(path / ADAPTER_FILE))
    full = {k: v for k, v in tensors.items() if not k.endswith((".lora_a", ".lora_b"))}
    if meta.get("new_words"):
        from ..nn.text_encoders import grow_vocabulary

        grow_vocabulary(model, len(meta["new_words"]))
    if full:
        parameters = dict(model.named_parameters())
        unknown = [k for k in full if k not in parameters]
        if unknown:
            raise CheckpointError(f"{path / ADAPTER_FILE}: {unknown[0]} is not a parameter of the model")
        with torch.no_grad():
            for key, value in full.items():
                if parameters[key].shape != value.shape:
                    raise CheckpointError(f"{path / ADAPTER_FILE}: {key} has shape {tuple(value.shape)}, the model "
                                          f"expects {tuple(parameters[key].shape)}")
                parameters[key].copy_(value)
    return meta


def fold_new_words(model: nn.Module) -> int | None:
    """Make the rows of new words part of the caption encoder's embedding table (for a merged checkpoint);
    returns the new vocabulary size, or None when the model had no new words."""
    from ..nn.text_encoders import GrownEmbedding

    for name, module in list(model.named_modules()):
        if isinstance(module, GrownEmbedding):
            parent_name, _, attribute = name.rpartition(".")
            table = torch.cat([module.weight, module.extra]).detach()
            setattr(model.get_submodule(parent_name), attribute, nn.Embedding.from_pretrained(table, freeze=False))
            return table.shape[0]
    return None


def copy_assets(source: Path, target: Path, overlay: Path | None = None) -> None:
    """Copy the files beside the weights that a checkpoint of this content type carries (its Modality's
    `assets`: tokenizers, labels, helper networks) from the checkpoint `source`, then from `overlay` (e.g. an
    adapter's chat template)."""
    config = RunConfig.from_json_file(Path(source) / ckpt.CONFIG_FILE)
    assets = registry.modality_for_data(config.data.kind, str(source)).assets
    for folder in (source, overlay):
        if folder is None:
            continue
        for name in assets:
            if (Path(folder) / name).is_file():
                shutil.copyfile(Path(folder) / name, Path(target) / name)


def data_assets(base: Path, data_config, finetune=None) -> dict[str, Any]:
    """What the data module needs from the base checkpoint to read new data the way the base does (its
    tokenizer, with any new words), as keyword arguments for the data builder: the content type's
    `finetune_assets`."""
    record = registry.modality_for_data(data_config.kind)
    return registry.resolve(record.finetune_assets)(Path(base), data_config, finetune) if record.finetune_assets else {}
