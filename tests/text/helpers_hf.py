"""Tiny Hugging Face model folders for the import, chat-template and Hub tests: a BPE tokenizer with a real
model's special tokens and chat template (tests/fixtures/chat_templates), a random Llama or Qwen2 saved by
transformers, no download."""

from __future__ import annotations

import json
from pathlib import Path

from genloom.lm.tokenizers import TextTokenizer

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
TOKENS = json.loads((TEMPLATES / "tokens.json").read_text())
TEXT = ("hello world how are you doing today the model answers questions briefly and kindly " * 3).split(". ")


def tokenizer_folder(folder: Path, name: str, add_bos_token: bool | None = None) -> TextTokenizer:
    """tokenizer.json + tokenizer_config.json (+ generation_config.json) of template `name` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = TOKENS[name]
    specials = list(dict.fromkeys(t for t in [spec["bos_token"], spec["eos_token"], *spec["added"]] if t))
    tokenizer = TextTokenizer.train_bpe(TEXT * 4, 300, special_tokens=specials)
    tokenizer.save(folder / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": (TEMPLATES / f"{name}.jinja").read_text(),
              "model_max_length": 256, "clean_up_tokenization_spaces": False,
              **{k: spec[k] for k in ("bos_token", "eos_token", "pad_token") if spec.get(k)}}
    if add_bos_token is not None:
        config["add_bos_token"] = add_bos_token
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": tokenizer.token_id(spec["bos_token"]) if spec["bos_token"] else None,
        "eos_token_id": [tokenizer.token_id(t) for t in spec["generation_eos"]]}))
    return tokenizer


def hf_model_folder(folder: Path, name: str = "llama-3.1", model_type: str = "llama", dtype=None) -> Path:
    """A random tiny transformers model of `model_type` saved with save_pretrained, with the tokenizer of
    template `name`."""
    import torch
    import transformers

    tokenizer = tokenizer_folder(folder, name)
    common = dict(vocab_size=tokenizer.vocab_size + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if model_type == "qwen2":
        config = transformers.Qwen2Config(**common, tie_word_embeddings=True)
        model_class = transformers.Qwen2ForCausalLM
    else:
        config = transformers.LlamaConfig(**common, tie_word_embeddings=False)
        model_class = transformers.LlamaForCausalLM
    torch.manual_seed(0)
    model = model_class(config).eval()
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder)
    tokenizer_folder(folder, name)          # save_pretrained wrote a generation_config.json of its own
    return folder
