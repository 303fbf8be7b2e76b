"""Hugging Face interop: import a local folder or a Hub repository of a supported family, export a genloom
text model.

Only safetensors weights are read (never `pytorch_model.bin`, which is a pickle), one tensor at a time; the
fast tokenizer file `tokenizer.json` and the files beside it (`tokenizer_config.json` with the chat template,
`generation_config.json`, `special_tokens_map.json`, `chat_template.jinja`) travel both ways unchanged. GGUF files (llama.cpp) go both ways too:
`export_gguf_file` / `import_gguf`, with the format itself in `genloom/lm/gguf.py`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..core import io as ckpt
from ..core.config import RunConfig, TrainConfig
from ..core.errors import CheckpointError
from ..lm.chat_templates import HF_TOKENIZER_FILES, TokenizerSettings
from ..lm.gguf import export_gguf, read_gguf
from ..lm.hf import Deferred, from_hf_deferred, to_hf
from ..lm.hub import download_model, is_hub_id
from ..lm.objective import LanguageModelConfig
from ..lm.tokenizers import TextTokenizer
from .chat import ModelChatTemplate
from .data import TextDataConfig

PICKLED = (".bin", ".pt", ".pth", ".pkl", ".ckpt")

__all__ = ["import_hf", "export_hf", "import_gguf", "export_gguf_file"]


def _shard_files(folder: Path) -> list[Path]:
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(f"{index}: not a Hugging Face shard index ({type(error).__name__})") from None
        outside = [s for s in shards if not isinstance(s, str) or Path(s).name != s or s.startswith(".")]
        if outside:
            raise CheckpointError(f"{index}: shard {outside[0]!r} is not a plain file name in {folder} (shards are "
                                  "read from the model's own folder only)")
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} names the shard {missing[0]}, which is not in {folder}")
        return [folder / s for s in shards]
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED)
    if pickled:
        raise CheckpointError(f"{folder} holds only pickled weights ({pickled[0]}); genloom reads safetensors only. "
                              "Convert them with transformers: model.save_pretrained(dir, safe_serialization=True)")
    raise CheckpointError(f"{folder} has no model.safetensors (or model.safetensors.index.json)")


class _LazyShards(dict):
    """{name: Deferred} over the shards of a Hugging Face folder: each tensor is read when converted."""

    def __init__(self, files: list[Path]):
        super().__init__()
        self.files = [ckpt.TensorFile(f) for f in files]
        for file in self.files:
            for name in file.names():
                if name in self:
                    raise CheckpointError(f"{file.path}: the tensor {name} is also in another shard")
                self[name] = Deferred(file.shape(name), file.dtype(name), lambda f=file, n=name: f.load(n))

    def close(self) -> None:
        for file in self.files:
            file.close()


def _read_hf_weights(folder: Path) -> dict:
    """Every tensor of a Hugging Face folder, loaded (small models; `import_hf` converts lazily)."""
    shards = _LazyShards(_shard_files(folder))
    try:
        return {name: value.load() for name, value in shards.items()}
    finally:
        shards.close()


def import_hf(hf_dir: str | Path, out: str | Path) -> Path:
    """Make a genloom checkpoint from a Hugging Face model directory (config.json, safetensors, tokenizer.json,
    and where it has them tokenizer_config.json, generation_config.json, chat_template.jinja) of a family in
    `genloom.lm.hf.FAMILIES` (GPT-2, Llama, Mistral, Qwen2/3, Phi-3, Gemma 1-3, OLMo-2, SmolLM2), or a Hub
    repository `ORG/NAME[@REVISION]` (downloaded first, see `genloom.lm.hub`).

    The weights are converted one tensor at a time from the (sharded) safetensors files and keep their dtype
    (bf16 stays bf16), so importing needs little more memory than one tensor. Nothing is written to `out` unless
    every check passes."""
    out = Path(out)
    if (out / ckpt.MODEL_FILE).exists():
        raise CheckpointError(f"{out} already holds a model; choose another --out")
    source = str(hf_dir)
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir() and is_hub_id(source):
        hf_dir = download_model(source)
    elif not hf_dir.is_dir():
        raise CheckpointError(f"{hf_dir} is not a folder, nor a Hub repository ORG/NAME[@REVISION]")
    if not (hf_dir / "config.json").is_file():
        raise CheckpointError(f"{hf_dir} has no config.json; expected a Hugging Face model directory")
    if not (hf_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{hf_dir} has no tokenizer.json (the fast-tokenizer file), which genloom needs to "
                              "turn text into tokens")
    try:
        hf_config = json.loads((hf_dir / "config.json").read_text())
    except (ValueError, OSError) as error:
        raise CheckpointError(f"{hf_dir / 'config.json'}: not readable JSON ({type(error).__name__})") from None
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{hf_dir / 'config.json'}: expected a JSON object")
    files = _shard_files(hf_dir)               # pickled-only folders are refused first
    tokenizer = TextTokenizer.load(hf_dir / "tokenizer.json")
    TokenizerSettings.read(hf_dir)             # a damaged tokenizer_config.json is refused before anything is written
    shards = _LazyShards(files)
    try:
        model_config, our_state = from_hf_deferred(hf_config, shards)
        if tokenizer.vocab_size > model_config.vocab_size:
            raise CheckpointError(f"{hf_dir / 'tokenizer.json'} has {tokenizer.vocab_size} tokens but the model's "
                                  f"embedding only {model_config.vocab_size}: they do not belong together")
        config = RunConfig(data=TextDataConfig(tokenizer="bpe"), model=model_config, objective=LanguageModelConfig(),
                           train=TrainConfig(), recipe=f"imported from {source}",
                           description=f"Hugging Face {hf_config.get('model_type')} model imported by genloom convert")
        writers = {
            ckpt.CONFIG_FILE: lambda p: p.write_text(config.to_json()),
            "tokenizer.json": lambda p: shutil.copyfile(hf_dir / "tokenizer.json", p),
            ckpt.MODEL_FILE: lambda p: ckpt.save_tensors_streamed(our_state, p, {"format": "genloom"}),
        }
        for name in HF_TOKENIZER_FILES:
            if (hf_dir / name).is_file():
                writers[name] = lambda p, name=name: shutil.copyfile(hf_dir / name, p)
        out.mkdir(parents=True, exist_ok=True)
        ckpt.commit(out, writers)
    finally:
        shards.close()
    return out


def export_hf(handle, out: str | Path) -> Path:
    """Write a loaded genloom text model (a TextModel on the CPU) as a Hugging Face directory that
    `from_pretrained` loads."""
    out = Path(out)
    if (out / "model.safetensors").exists():
        raise CheckpointError(f"{out} already holds a model.safetensors; choose another --out")
    hf_config, state = to_hf(handle.model.config, handle.model.state_dict())
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    hf_config["torch_dtype"] = "bfloat16" if dtypes == {torch.bfloat16} else "float32"
    settings = TokenizerSettings.read(handle.path)
    eos = [handle.tokenizer.token_id(s) for s in settings.stop_strings(handle.tokenizer)]
    bos = handle.tokenizer.token_id(settings.special.get("bos_token", ""))
    hf_config.update({"bos_token_id": bos, "eos_token_id": (eos[0] if len(eos) == 1 else eos) if eos else None,
                      "pad_token_id": handle.tokenizer.token_id(settings.special.get("pad_token", ""))})
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    ckpt.save_tensors(state, out / "model.safetensors", {"format": "pt"})
    handle.tokenizer.save(out / "tokenizer.json")
    for name in HF_TOKENIZER_FILES:        # the imported model's own settings and chat template, as they came
        if (Path(handle.path) / name).is_file():
            shutil.copyfile(Path(handle.path) / name, out / name)
    template = getattr(handle, "chat_template", None)
    if isinstance(template, ModelChatTemplate):
        template.save(out)                 # a fine-tuned adapter's template wins over its base's
    if not (out / "tokenizer_config.json").is_file():
        # A genloom-made tokenizer: without this file AutoTokenizer takes the folder for GPT-2's tokenizer
        # (its slow class, its pre-tokenizer), which drops the spaces of a character vocabulary.
        (out / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": handle.model.config.block_size,
             "clean_up_tokenization_spaces": False}, indent=2) + "\n")
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
