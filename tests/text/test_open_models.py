"""An imported open model end to end: a tiny random Qwen2 with Qwen2.5's chat template and tokenizer files is
imported (bf16 weights stay bf16 on disk), chats through its own template, is fine-tuned on chat JSONL with LoRA
(the trained tokens are the assistant's turns in that template), fully, and with DPO; the adapter is merged, the
merged model exported, and transformers loads the export with genloom's logits."""

import json

import pytest
import torch
from conftest import run_cli
from helpers_hf import hf_model_folder

import genloom
from genloom.core import io as ckpt
from genloom.text.chat import ModelChatTemplate
from genloom.text.convert import export_hf, import_hf

transformers = pytest.importorskip("transformers")

FAST = ["train.max_steps=3", "train.batch_size=2", "train.warmup_steps=1", "train.eval_interval=3",
        "train.eval_batches=1", "train.sample_length=4", "train.precision=fp32", "train.progress=false",
        "train.compile=false", "model.dropout=0.0"]
CONVERSATIONS = [[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": f"hello {i}"},
                  {"role": "assistant", "content": "the model answers kindly"}] for i in range(6)]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("open")
    folder = hf_model_folder(root / "hf", "qwen2.5", "qwen2")
    out = import_hf(folder, root / "run")
    return folder, out, root


def hf_logits(folder, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_imported_model_chats_in_its_own_template(imported):
    folder, out, _ = imported
    for name in ("tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (folder / name).read_bytes()
    model = genloom.load(out, device="cpu")
    assert isinstance(model.chat_template, ModelChatTemplate)
    reference = transformers.AutoTokenizer.from_pretrained(str(folder))
    messages = CONVERSATIONS[0][:2]
    assert model.chat_prompt(messages) == reference.apply_chat_template(messages, tokenize=False,
                                                                        add_generation_prompt=True)
    assert model.chat_template.stop == ["<|im_end|>", "<|endoftext|>"]
    ids = model.tokenizer.encode(model.chat_prompt(messages))
    with torch.no_grad():
        ours = model.model(torch.tensor([ids]))
    ours = ours[0] if isinstance(ours, tuple) else ours
    assert (ours[0].float() - hf_logits(folder, ids)).abs().max() < 1e-4
    (reply,) = model.reply([messages], max_new_tokens=5)
    assert isinstance(reply, str)


def test_bf16_weights_stay_bf16(tmp_path):
    folder = hf_model_folder(tmp_path / "hf", "llama-3.1", "llama", dtype=torch.bfloat16)
    out = import_hf(folder, tmp_path / "run")
    with ckpt.TensorFile(out / ckpt.MODEL_FILE) as weights:
        assert {weights.dtype(n) for n in weights.names()} == {torch.bfloat16}
    model = genloom.load(out, device="cpu")
    assert {p.dtype for p in model.model.parameters()} <= {torch.bfloat16, torch.float32}
    assert model.generate("hello", max_new_tokens=3, temperature=0.0, seed=0)


def test_lora_full_and_dpo_then_merge_and_export(imported, tmp_path):
    folder, base, _ = imported
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": f"hello {i}", "chosen": "kindly", "rejected": "no"}) + "\n"
                             for i in range(6)))
    lora = genloom.finetune("shakespeare-char-safety", base, out=tmp_path / "lora",
                            overrides=[f"data.path={chat}", *FAST])
    adapter = tmp_path / "lora"
    assert (adapter / "tokenizer_config.json").is_file()      # the template it was tuned in travels with it
    assert lora is not None
    tuned = genloom.load(base, adapters=adapter, device="cpu")
    assert isinstance(tuned.chat_template, ModelChatTemplate)
    genloom.finetune("shakespeare-char-safety", base, out=tmp_path / "full",
                     overrides=[f"data.path={chat}", "finetune.method=full", *FAST])
    full = genloom.load(tmp_path / "full", device="cpu")
    assert isinstance(full.chat_template, ModelChatTemplate)
    genloom.finetune("shakespeare-char-safety-dpo", base, out=tmp_path / "dpo", overrides=[f"data.path={prefs}", *FAST])
    assert (tmp_path / "dpo" / "adapter.safetensors").is_file()

    merged = genloom.merge(base, adapter, tmp_path / "merged")
    assert (merged / "tokenizer_config.json").is_file()
    handle = genloom.load(merged, device="cpu")
    exported = export_hf(handle, tmp_path / "export")
    assert json.loads((exported / "tokenizer_config.json").read_text())["chat_template"]
    assert json.loads((exported / "config.json").read_text())["eos_token_id"] is not None
    ids = handle.tokenizer.encode(handle.chat_prompt(CONVERSATIONS[1][:2]))
    with torch.no_grad():
        ours = handle.model(torch.tensor([ids]))
    ours = ours[0] if isinstance(ours, tuple) else ours
    assert (ours[0].float() - hf_logits(exported, ids)).abs().max() < 1e-4
    reference = transformers.AutoTokenizer.from_pretrained(str(exported))
    assert reference.apply_chat_template(CONVERSATIONS[1][:2], tokenize=False, add_generation_prompt=True) == \
        handle.chat_prompt(CONVERSATIONS[1][:2])


def test_generate_text_chat_and_bad_tokenizer(imported, tmp_path):
    folder, base, _ = imported
    result = run_cli("generate", "text", "--checkpoint", str(base), "--chat", "--prompt", "hello",
                     "--max-new-tokens", "4", "--temperature", "0", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    big = hf_model_folder(tmp_path / "small", "qwen2.5", "qwen2")
    config = json.loads((big / "config.json").read_text())
    config["vocab_size"] = 100
    (big / "config.json").write_text(json.dumps(config))
    result = run_cli("convert", "import", "--hf", str(big), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "genloom: error:" in result.stderr and not (tmp_path / "o").exists()
