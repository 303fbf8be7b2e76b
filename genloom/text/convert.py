"""Hugging Face interop: import a local GPT-2 / Llama directory, export a genloom text model.

Only safetensors weights are read (never `pytorch_model.bin`, which is a pickle), and the fast
tokenizer file `tokenizer.json` travels both ways unchanged. GGUF files (llama.cpp) go both ways too:
`export_gguf_file` / `import_gguf`, with the format itself in `genloom/lm/gguf.py`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..core import io as ckpt
from ..core.config import RunConfig, TrainConfig
from ..core.errors import CheckpointError
from ..lm.gguf import export_gguf, read_gguf
from ..lm.hf import from_hf, to_hf
from ..lm.objective import LanguageModelConfig
from .data import TextDataConfig

__all__ = ["import_hf", "export_hf", "import_gguf", "export_gguf_file"]


def _read_hf_weights(folder: Path) -> dict:
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return ckpt.load_tensors(single)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(f"{index}: not a Hugging Face shard index ({type(error).__name__})") from None
        outside = [s for s in shards if not isinstance(s, str) or Path(s).name != s or s.startswith(".")]
        if outside:
            raise CheckpointError(f"{index}: shard {outside[0]!r} is not a plain file name in {folder} (shards are "
                                  "read from the model's own folder only)")
        state = {}
        for shard in shards:
            state.update(ckpt.load_tensors(folder / shard))
        return state
    if any(folder.glob("*.bin")):
        raise CheckpointError(f"{folder} holds only pickled weights (*.bin); genloom reads safetensors only. "
                              "Convert them with transformers: model.save_pretrained(dir, safe_serialization=True)")
    raise CheckpointError(f"{folder} has no model.safetensors (or model.safetensors.index.json)")


def import_hf(hf_dir: str | Path, out: str | Path) -> Path:
    """Make a genloom checkpoint from a Hugging Face model directory (config.json, safetensors, tokenizer.json)
    of a family in `genloom.lm.hf.FAMILIES` (GPT-2, Llama, Mistral, Qwen2/3, Phi-3, Gemma 1-3, OLMo-2)."""
    hf_dir, out = Path(hf_dir), Path(out)
    if not (hf_dir / "config.json").is_file():
        raise CheckpointError(f"{hf_dir} has no config.json; expected a Hugging Face model directory")
    if not (hf_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{hf_dir} has no tokenizer.json (the fast-tokenizer file), which genloom needs to "
                              "turn text into tokens")
    if (out / ckpt.MODEL_FILE).exists():
        raise CheckpointError(f"{out} already holds a model; choose another --out")
    hf_config = json.loads((hf_dir / "config.json").read_text())
    state = _read_hf_weights(hf_dir)
    model_config, our_state = from_hf(hf_config, state)
    config = RunConfig(data=TextDataConfig(tokenizer="bpe"), model=model_config, objective=LanguageModelConfig(),
                       train=TrainConfig(), recipe=f"imported from {hf_dir}",
                       description=f"Hugging Face {hf_config.get('model_type')} model imported by genloom convert")
    out.mkdir(parents=True, exist_ok=True)
    ckpt.commit(out, {
        ckpt.CONFIG_FILE: lambda p: p.write_text(config.to_json()),
        "tokenizer.json": lambda p: shutil.copyfile(hf_dir / "tokenizer.json", p),
        ckpt.MODEL_FILE: lambda p: ckpt.save_tensors(our_state, p, {"format": "genloom"}),
    })
    return out


def export_hf(handle, out: str | Path) -> Path:
    """Write a loaded genloom text model (a TextModel on the CPU) as a Hugging Face directory that
    `from_pretrained` loads."""
    out = Path(out)
    if (out / "model.safetensors").exists():
        raise CheckpointError(f"{out} already holds a model.safetensors; choose another --out")
    hf_config, state = to_hf(handle.model.config, handle.model.state_dict())
    hf_config["torch_dtype"] = "float32"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    ckpt.save_tensors(state, out / "model.safetensors", {"format": "pt"})
    handle.tokenizer.save(out / "tokenizer.json")
    return out


def import_gguf(file: str | Path, out: str | Path) -> Path:
    """Make a genloom checkpoint from a GGUF file of llama.cpp's gpt2 or llama architecture (weights
    dequantised to float32, the tokenizer rebuilt as tokenizer.json)."""
    file, out = Path(file), Path(out)
    if (out / ckpt.MODEL_FILE).exists():
        raise CheckpointError(f"{out} already holds a model; choose another --out")
    model = read_gguf(file)
    config = RunConfig(data=TextDataConfig(tokenizer=model.tokenizer.kind), model=model.config,
                       objective=LanguageModelConfig(), train=TrainConfig(), recipe=f"imported from {file}",
                       description=f"GGUF {model.arch} model imported by genloom convert "
                                   f"({', '.join(sorted(set(model.tensor_types.values())))} tensors)")
    out.mkdir(parents=True, exist_ok=True)
    ckpt.commit(out, {
        ckpt.CONFIG_FILE: lambda p: p.write_text(config.to_json()),
        "tokenizer.json": lambda p: model.tokenizer.save(p),
        ckpt.MODEL_FILE: lambda p: ckpt.save_tensors(model.state, p, {"format": "genloom"}),
    })
    return out


def export_gguf_file(handle, out: str | Path, quant: str = "f16") -> Path:
    """Write a loaded genloom text model (a TextModel on the CPU) as one GGUF file that llama.cpp runs."""
    return export_gguf(handle.model, handle.tokenizer, out, quant, name=Path(handle.path).name)
