"""The public Python API: train, fine-tune, merge and load. The command line and the server are thin layers
over these functions; `load` opens a checkpoint as its content type's handle, through the registry."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .core import io as ckpt
from .core import registry
from .core.config import RunConfig, load_recipe
from .core.errors import CheckpointError, GenloomError
from .handle import EvalRequest, Handle
from .nn.quantize import check_quantize
from .nn.quantize import quantize as quantize_model
from .train.memory import check_weights_fit
from .train.trainer import Trainer, TrainResult

__all__ = ["train", "finetune", "merge", "distill", "load", "evaluate", "default_run_dir", "OpenedCheckpoint",
           "EvalRequest"]


def default_run_dir(recipe: str) -> Path:
    """runs/<recipe>-<date>-<time> in the current directory (never an existing folder)."""
    name = Path(recipe).stem if recipe.endswith(".toml") else recipe
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path("runs") / f"{name}-{stamp}-{n}"
    return path


def train(recipe: str | RunConfig, out: str | Path | None = None, overrides: list[str] | None = None,
          max_time: float | None = None, resume: bool = False, started_at: float | None = None) -> TrainResult:
    """Train a built-in recipe, a TOML file or a RunConfig into `out` (a checkpoint directory)."""
    overrides = list(overrides or [])
    if max_time is not None:
        overrides.append(f"train.max_time={max_time}")
    if isinstance(recipe, RunConfig):
        config = recipe
        if overrides:
            from .core.config import apply_overrides
            config = RunConfig.from_dict(apply_overrides(config.to_dict(), overrides))
    else:
        config = load_recipe(recipe, overrides)
    out = Path(out) if out is not None else default_run_dir(config.recipe or "run")
    return Trainer(config, out, resume=resume, started_at=started_at).fit()


def finetune(recipe: str, base: str | Path, out: str | Path | None = None, overrides: list[str] | None = None,
             max_time: float | None = None, resume: bool = False, started_at: float | None = None) -> TrainResult:
    """Fine-tune the checkpoint in `base` with a recipe (full, frozen parts, or LoRA per its [finetune] table).

    A LoRA run leaves in `out` the adapter alone (adapter.safetensors + adapter.json), not the base weights.
    """
    overrides = list(overrides or [])
    if max_time is not None:
        overrides.append(f"train.max_time={max_time}")
    config = load_recipe(recipe, overrides, base=base)
    out = Path(out) if out is not None else default_run_dir(config.recipe or "finetune")
    return Trainer(config, out, resume=resume, started_at=started_at).fit()


def merge(base: str | Path, adapter: str | Path, out: str | Path, verify: bool = True) -> Path:
    """Fold the LoRA adapter in `adapter` into the weights of `base`; write a full checkpoint to `out`."""
    from .nn.lora import merge_adapter
    from .train.finetune import ADAPTER_JSON, copy_assets, fold_new_words

    base, adapter, out = Path(base), Path(adapter), Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"--out {out} already exists and is not empty; choose a new folder")
    handle = load(base, adapters={"merged": adapter}, ema=True, verify=verify)
    model = handle.model
    merge_adapter(model, "merged")
    config = json.loads((base / ckpt.CONFIG_FILE).read_text())
    meta = json.loads((adapter / ADAPTER_JSON).read_text())
    vocab_size = fold_new_words(model)
    if vocab_size:
        config["model"]["text_vocab_size"] = vocab_size
    out.mkdir(parents=True, exist_ok=True)
    config["description"] = f"{config.get('description', '')} + adapter {adapter.name} merged".strip()
    writers = {
        ckpt.CONFIG_FILE: lambda p: p.write_text(json.dumps(config, indent=2) + "\n"),
        ckpt.MODEL_FILE: lambda p: ckpt.save_tensors(model.state_dict(), p, {
            "format": "genloom", "merged_adapter": str(adapter.resolve()), "adapter_step": str(meta.get("step"))}),
    }
    ckpt.commit(out, writers)
    copy_assets(base, out, overlay=adapter)
    if meta.get("new_words"):
        handle.tokenizer.save(out / "caption_tokenizer.json")        # with the new words
    return out










def distill(source: str | Path, out: str | Path, steps: int = 2, method: str = "progressive", device: str = "auto",
            progress: bool = True, verify: bool = True, **options) -> Path:
    """Distil the diffusion or flow-matching image model in `source` into a sampler of `steps` Euler steps and
    write it to `out` as a checkpoint that `load`, `genloom generate image`, `eval` and `serve` open like any
    other and that samples in its `steps` by default. `method`: progressive (the default) or reflow; `options`:
    the other fields of `genloom.diffusion.distill.DistillConfig` (pairs, train_steps, teacher_steps, ...)."""
    import dataclasses

    from .diffusion.distill import DistillConfig, distill_model
    from .train.finetune import copy_assets

    source, out = Path(source), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"--out {out} already exists and is not empty; choose a new folder")
    config = DistillConfig(method=method, steps=steps, **options)
    handle = load(source, device=device, verify=verify)
    if getattr(handle, "adapters", None):
        raise GenloomError(f"{source} has adapters loaded; fold them in first (genloom merge) and distil the result")
    student, objective = distill_model(handle.model, handle.config.objective, config, str(source), progress)
    saved = json.loads((source / ckpt.CONFIG_FILE).read_text())
    saved["objective"] = dataclasses.asdict(objective)
    saved["description"] = f"{saved.get('description', '')} + distilled to {steps} steps ({method})".strip()
    out.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().float().cpu().contiguous() for name, tensor in student.state_dict().items()}
    writers = {
        ckpt.CONFIG_FILE: lambda p: p.write_text(json.dumps(saved, indent=2) + "\n"),
        ckpt.MODEL_FILE: lambda p: ckpt.save_tensors(state, p, {"format": "genloom",
                                                                "distilled_from": str(source.resolve())}),
    }
    ckpt.commit(out, writers)
    copy_assets(source, out)
    return out


def _adapter_dirs(adapters) -> dict[str, Path]:
    if adapters is None:
        return {}
    if isinstance(adapters, (str, Path)):
        adapters = [adapters]
    if isinstance(adapters, dict):
        return {str(k): Path(v) for k, v in adapters.items()}
    out: dict[str, Path] = {}
    for item in adapters:
        folder = Path(item)
        name = folder.resolve().name
        while name in out:
            name += "_"
        out[name] = folder
    return out


@dataclass(frozen=True)
class OpenedCheckpoint:
    """A checkpoint folder read by `load`, handed to its content type's `open` to make the handle."""

    path: Path                       # the checkpoint folder (the base model's, when an adapter folder was opened)
    config: RunConfig                # what the handle follows: the adapter's run config where one was opened directly
    base_config: RunConfig           # the checkpoint's own config.json
    model: torch.nn.Module           # built from base_config, weights loaded, adapters attached, on its device
    adapter_dirs: dict[str, Path] = field(default_factory=dict)
    adapter_metas: dict[str, dict] = field(default_factory=dict)


def load(path: str | Path, device: str = "auto", quantize: str | None = None,
         ema: bool = True, adapters=None, verify: bool = True) -> Handle:
    """Open a checkpoint directory written by `genloom train` as the handle of its content type (a TextModel,
    an ImageModel, ...: the `open` of the content package whose data the checkpoint was trained on, found
    through the registry).

    `quantize="int8"` stores the linear weights of a text model as int8 for faster CPU decoding (a
    small rounding error), `quantize="int4"` as 4-bit codes in groups of 128 inputs with a scale and
    zero point each (about 7.5x fewer weight bytes than fp32, CPU only; a larger rounding error).
    `ema=True` uses the averaged weights where the run kept them.
    `adapters`: LoRA adapter folders (written by `genloom finetune`) to load on top: one folder, a list
    (named after their folders) or {name: folder}. One adapter is applied by default; with several, the
    base model is, and `handle.use_adapter(name)` (or `adapter=` per call) picks one. A LoRA run's
    folder can also be opened directly: its base model is loaded from where adapter.json says.
    `verify=False` skips checking weight files against the SHA-256 sums written with them (huge files).
    """
    from .train.finetune import attach_adapter, is_adapter_dir, read_adapter

    path = Path(path)
    adapter_dirs = _adapter_dirs(adapters)
    run_config = None
    if path.is_dir() and is_adapter_dir(path):
        meta = read_adapter(path)
        base = Path(meta.get("base", ""))
        if not base.is_dir():
            raise CheckpointError(f"{path} holds an adapter whose base model {base} is gone; pass the base model and "
                                  f"the adapter: --checkpoint BASE_DIR --adapter {path}")
        adapter_dirs = {path.resolve().name: path, **adapter_dirs}
        run_config = RunConfig.from_json_file(path / ckpt.CONFIG_FILE)     # what the adapter was trained on
        path = base
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory (expected a genloom checkpoint directory)")
    ckpt.recover(path)
    for name in (ckpt.CONFIG_FILE, ckpt.MODEL_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is missing {name}; is it a genloom checkpoint directory?")
    config = RunConfig.from_json_file(path / ckpt.CONFIG_FILE)
    record = registry.modality_for_data(config.data.kind, str(path))
    if adapter_dirs and not record.adapters:
        raise GenloomError(f"adapters on {record.title} models are not supported yet")
    check_quantize(quantize)
    if quantize is not None and adapter_dirs:
        raise GenloomError("quantize and adapters cannot be combined: fold the adapter into the base first "
                           "(genloom merge --base BASE --adapter DIR --out MERGED) and quantize the result")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    build = registry.lookup("model", config.model.kind).build
    check_weights_fit(config, lambda: build(config.model, config), str(path / ckpt.CONFIG_FILE), device)
    dtype = _kept_dtype(path, device) if not adapter_dirs and quantize is None else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)               # bf16 weights are built as bf16: no fp32 copy of a big model
    try:
        model = build(config.model, config)
    finally:
        torch.set_default_dtype(previous)
    weights = path / ckpt.EMA_FILE if ema and (path / ckpt.EMA_FILE).is_file() else path / ckpt.MODEL_FILE
    metas = {name: read_adapter(folder) for name, folder in adapter_dirs.items()}
    wanted = {meta.get("base_weights") for meta in metas.values()}
    if len(wanted) > 1:
        raise CheckpointError("these adapters were trained on different weights of the base (model and ema): "
                              + ", ".join(f"{n}: {m.get('base_weights')}" for n, m in metas.items()))
    if wanted and (path / next(iter(wanted))).is_file():
        weights = path / next(iter(wanted))
    ckpt.load_weights(model, weights, verify=verify)
    broken = [name for name, tensor in model.state_dict().items()
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise CheckpointError(f"{weights} holds weights that are not finite numbers (NaN or infinity) in "
                              f"{len(broken)} tensor(s), e.g. {broken[0]}; the run that wrote it diverged or the file "
                              "was damaged")
    if adapter_dirs:
        from .nn.lora import use_adapter, weights_fingerprint

        full = [n for n, m in metas.items() if m.get("train_also")]
        if full and len(adapter_dirs) > 1:
            raise CheckpointError(f"the adapter {adapter_dirs[full[0]]} changes whole parameters "
                                  f"({', '.join(metas[full[0]]['train_also'][:3])}), so it cannot share a base "
                                  "model with other adapters; load it alone")
        fingerprint = weights_fingerprint(model.state_dict())
        model_dict = json.loads(config.to_json())["model"]
        for name, folder in adapter_dirs.items():
            attach_adapter(model, model_dict, fingerprint, folder, name, str(path), verify=verify)
        use_adapter(model, next(iter(adapter_dirs)) if len(adapter_dirs) == 1 else None)
    model.to(device).eval()
    quantize_model(model, quantize)
    handle = registry.resolve(record.open)(OpenedCheckpoint(path, run_config or config, config, model,
                                                            adapter_dirs, metas))
    handle.set_adapters(list(adapter_dirs))
    return handle


def _kept_dtype(path: Path, device: str) -> torch.dtype:
    """bfloat16 when every floating tensor of the checkpoint's weights is bf16 (an imported bf16 model) and this
    machine multiplies bf16 faster than fp32 (the probe of `genloom.core.machine`), else float32."""
    from .core.machine import bf16_is_faster, machine_profile

    files = [path / name for name in (ckpt.EMA_FILE, ckpt.MODEL_FILE) if (path / name).is_file()]
    try:
        for file in files:
            with ckpt.TensorFile(file) as weights:
                if {weights.dtype(n) for n in weights.names() if weights.dtype(n).is_floating_point} != {torch.bfloat16}:
                    return torch.float32
    except CheckpointError:
        return torch.float32                     # load_weights names the problem
    return torch.bfloat16 if files and bf16_is_faster(machine_profile(device)) else torch.float32


def evaluate(handle: Handle, request: EvalRequest | None = None, **options):
    """Score a loaded model the way `genloom eval` does (its content type's evaluation): `request` or the
    same options as keywords (task, data, num_samples, steps, sampler, guidance, seed, ...). Returns a result
    with `summary()` and `to_json()`."""
    request = request or EvalRequest(**options)
    return registry.resolve(registry.modality_of(handle).evaluate)(handle, request)
