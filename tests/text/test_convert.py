"""`genloom convert`: the exported model loads in transformers with the same logits, and back."""

import json

import pytest
import torch
from conftest import run_cli, tiny

from genloom import api, load

transformers = pytest.importorskip("transformers")

GPT2 = ["model.position=learned", "model.norm=layernorm", "model.mlp=gelu_tanh", "model.bias=true",
        "model.tie_embeddings=true", "model.qk_norm=false", "train.max_steps=3"]
LLAMA = ["model.position=rope", "model.norm=rmsnorm", "model.mlp=swiglu", "model.bias=false", "model.qk_norm=false",
         "model.tie_embeddings=false", "model.n_kv_head=1", "train.max_steps=3"]


@pytest.mark.parametrize("style", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_export_then_import_round_trip(style, corpus, tmp_path):
    run = tmp_path / "run"
    api.train("shakespeare-char", out=run, overrides=tiny(corpus, *style))
    exported = tmp_path / "hf"
    result = run_cli("convert", "export", "--checkpoint", str(run), "--out", str(exported))
    assert result.returncode == 0, result.stderr
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    ours = load(run)
    tokens = torch.tensor([ours.tokenizer.encode("MACBETH:\nSo foul and fair a day")])
    with torch.no_grad():
        assert torch.allclose(hf(tokens).logits, ours.model(tokens), atol=1e-4, rtol=0)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(exported / "tokenizer.json"))
    assert fast("MACBETH:").input_ids == ours.tokenizer.encode("MACBETH:")
    auto = transformers.AutoTokenizer.from_pretrained(exported)       # what lm-eval and most users call
    text = "MACBETH:\nSo foul and fair a day"
    assert auto(text).input_ids == ours.tokenizer.encode(text) and auto.decode(auto(text).input_ids) == text

    back = tmp_path / "back"
    result = run_cli("convert", "import", "--hf", str(exported), "--out", str(back))
    assert result.returncode == 0, result.stderr
    again = load(back)
    with torch.no_grad():
        assert torch.allclose(again.model(tokens), ours.model(tokens), atol=1e-6)
    assert again.generate("MAC", max_new_tokens=20, temperature=0) == ours.generate("MAC", max_new_tokens=20,
                                                                                       temperature=0)


def test_models_without_an_equivalent_are_refused(corpus, tmp_path):
    run = tmp_path / "run"
    api.train("shakespeare-char", out=run, overrides=tiny(corpus, "model.qk_norm=true", "train.max_steps=2"))
    result = run_cli("convert", "export", "--checkpoint", str(run), "--out", str(tmp_path / "hf"))
    # the recipe's relu2 MLP; its QK-norm alone would export as Qwen3
    assert result.returncode == 2 and "model.mlp='relu2'" in result.stderr and "no exact Hugging Face" in result.stderr


def test_import_refuses_pickles_and_missing_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    result = run_cli("convert", "import", "--hf", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "no tokenizer.json" in result.stderr
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really")
    result = run_cli("convert", "import", "--hf", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "pickled weights" in result.stderr
