"""Fine-tuning: LoRA adapters, merging, instruction tuning with loss masks and packing, DPO, safety data."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import run_cli, tiny
from safetensors.torch import load_file, save_file

import genloom
from genloom import api
from genloom.core.errors import CheckpointError, ConfigError, DataError
from genloom.lm.dpo import dpo_loss, sequence_logprobs
from genloom.lm.transformer import Transformer, TransformerConfig
from genloom.nn.lora import add_adapter, merge_adapter, use_adapter
from genloom.text.chat import (
    IGNORE,
    ChatData,
    ChatDataConfig,
    ChatTemplate,
    PreferenceData,
    PreferenceDataConfig,
)
from genloom.text.safety import (
    ANSWERS,
    REFUSALS,
    is_refusal,
    safety_conversations,
    safety_eval_prompts,
)

FT = ["train.batch_size=8", "train.warmup_steps=2", "train.eval_interval=5", "train.eval_batches=2",
      "train.log_interval=1", "train.sample_length=10", "train.precision=fp32", "train.progress=false",
      "train.compile=false"]


@pytest.fixture(scope="session")
def base(corpus, tmp_path_factory):
    """A tiny character model trained for a few steps (the base every fine-tuning test starts from)."""
    out = tmp_path_factory.mktemp("base") / "run"
    genloom.train("shakespeare-char", out=out, overrides=tiny(corpus, "train.max_steps=20", "train.eval_interval=20"))
    return out


@pytest.fixture(scope="session")
def chat_base(corpus, tmp_path_factory):
    """The same, with room for a whole request and reply (128 characters)."""
    out = tmp_path_factory.mktemp("chat-base") / "run"
    genloom.train("shakespeare-char", out=out, overrides=tiny(corpus, "model.block_size=128", "train.max_steps=20",
                                                              "train.eval_interval=20"))
    return out


def lora_run(base, corpus, out, *extra, steps=6):
    return api.finetune("shakespeare-char-lora", base, out=out,
                        overrides=[f"data.path={corpus}", *FT, f"train.max_steps={steps}", *extra])


def test_lora_trains_only_adapter_tensors_and_saves_only_the_adapter(base, corpus, tmp_path):
    out = tmp_path / "lora"
    lora_run(base, corpus, out, "finetune.lora_targets=[\"*.attn.qkv\", \"*.mlp.up\"]")
    assert (out / "adapter.safetensors").is_file() and (out / "adapter.json").is_file()
    assert not (out / "model.safetensors").exists()                      # no copy of the base weights
    adapter = load_file(str(out / "adapter.safetensors"))
    assert set(adapter) == {f"blocks.{i}.{m}.lora_{ab}" for i in range(2) for m in ("attn.qkv", "mlp.up")
                            for ab in "ab"}
    assert all(adapter[f"blocks.{i}.attn.qkv.lora_b"].abs().sum() > 0 for i in range(2))   # B starts at 0
    # Inside the fine-tuned model, every base tensor is the base checkpoint's, bit for bit.
    handle = genloom.load(out)
    base_tensors = load_file(str(base / "model.safetensors"))
    state = handle.model.state_dict()
    for key, value in base_tensors.items():
        assert torch.equal(state[key], value), key
    assert handle.adapters == ["lora"] and handle.adapter == "lora"
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["base"] == str(base.resolve()) and meta["rank"] == 4


def test_merged_model_matches_base_plus_adapter(base, corpus, tmp_path):
    out = tmp_path / "lora"
    lora_run(base, corpus, out)
    merged = tmp_path / "merged"
    result = run_cli("merge", "--base", str(base), "--adapter", str(out), "--out", str(merged))
    assert result.returncode == 0, result.stderr
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    tokens = torch.randint(0, 30, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted = genloom.load(base, adapters=[out]).model(tokens)
        folded = genloom.load(merged).model(tokens)
        plain = genloom.load(base).model(tokens)
    assert torch.allclose(adapted, folded, atol=1e-5)
    assert not torch.allclose(adapted, plain, atol=1e-3)                  # the adapter did change the model
    # A merged checkpoint is a plain model: no LoRA layers left.
    assert not any("lora" in k for k in load_file(str(merged / "model.safetensors")))
    again = run_cli("merge", "--base", str(base), "--adapter", str(out), "--out", str(merged))
    assert again.returncode == 2 and "not empty" in again.stderr


def test_adapter_of_another_base_is_refused(base, corpus, tmp_path):
    out = tmp_path / "lora"
    lora_run(base, corpus, out)
    other = tmp_path / "other"
    shutil.copytree(base, other)
    tensors = load_file(str(other / "model.safetensors"))
    tensors["blocks.0.attn.qkv.weight"] = tensors["blocks.0.attn.qkv.weight"] * 1.01
    save_file(tensors, str(other / "model.safetensors"))
    (other / "checksums.json").unlink()          # a deliberately different base, not a damaged one
    with pytest.raises(CheckpointError, match="only works with the exact weights"):
        genloom.load(other, adapters=[out])
    wider = tmp_path / "wider"
    genloom.train("shakespeare-char", out=wider, overrides=tiny(corpus, "model.d_model=48", "train.max_steps=2"))
    with pytest.raises(CheckpointError, match="another kind of model"):
        genloom.load(wider, adapters=[out])
    result = run_cli("generate", "text", "--checkpoint", str(other), "--adapter", str(out), "--max-new-tokens", "5")
    assert result.returncode == 2 and "exact weights" in result.stderr and "Traceback" not in result.stderr


def test_generate_with_adapter_on_the_command_line_is_greedy_and_matches_the_api(base, corpus, tmp_path):
    out = tmp_path / "lora"
    lora_run(base, corpus, out)
    result = run_cli("generate", "text", "--checkpoint", str(base), "--adapter", str(out), "--prompt", "KING",
                     "--max-new-tokens", "30", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    expected = genloom.load(base, adapters=[out]).generate("KING", max_new_tokens=30, temperature=0.0)[0]
    assert result.stdout == "KING" + expected + "\n"
    adapted = genloom.load(base, adapters=[out]).complete("KING", max_new_tokens=30, temperature=0.0)[0].logprobs
    plain = genloom.load(base).complete("KING", max_new_tokens=30, temperature=0.0)[0].logprobs
    assert adapted != plain                                             # the adapter was applied


def test_lora_layers_route_adapters_per_row_and_merge_exactly():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, d_model=16))
    add_adapter(model, "a", ["*.attn.qkv", "*.mlp.*"], rank=2, alpha=4.0)
    add_adapter(model, "b", ["*.attn.qkv"], rank=3, alpha=3.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)            # non-zero B matrices
    tokens = torch.randint(0, 20, (3, 8))
    outputs = {}
    with torch.no_grad():
        for name in ("a", "b", None):
            use_adapter(model, name)
            outputs[name] = model(tokens)
        use_adapter(model, ["b", None, "a"])
        mixed = model(tokens)
    assert torch.allclose(mixed[0], outputs["b"][0], atol=1e-6)
    assert torch.allclose(mixed[1], outputs[None][1], atol=1e-6)
    assert torch.allclose(mixed[2], outputs["a"][2], atol=1e-6)
    assert not torch.allclose(outputs["a"], outputs[None])
    with pytest.raises(KeyError, match="no adapter named 'c'"):
        use_adapter(model, "c")
    use_adapter(model, "a")
    merge_adapter(model, "a")
    use_adapter(model, None)
    with torch.no_grad():
        assert torch.allclose(model(tokens), outputs["a"], atol=1e-5)


def test_lora_resume_continues_exactly(base, corpus, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    lora_run(base, corpus, whole, "train.eval_interval=3", steps=6)
    lora_run(base, corpus, parts, "train.eval_interval=3", steps=3)
    config = json.loads((parts / "config.json").read_text())
    assert config["finetune"]["method"] == "lora"
    api.finetune("shakespeare-char-lora", base, out=parts, resume=True,
                 overrides=[f"data.path={corpus}", *FT, "train.max_steps=6", "train.eval_interval=3"])
    a, b = load_file(str(whole / "adapter.safetensors")), load_file(str(parts / "adapter.safetensors"))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_full_finetuning_with_frozen_parts(base, corpus, tmp_path):
    out = tmp_path / "full"
    api.finetune("shakespeare-char", base, out=out,
                 overrides=[f"data.path={corpus}", *FT, "train.max_steps=4", "finetune.freeze=[\"embed.*\", \"blocks.0.*\"]"])
    before, after = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for key in before:
        frozen = key.startswith(("embed.", "blocks.0."))
        assert torch.equal(before[key], after[key]) == frozen, key
    with pytest.raises(ConfigError, match="matches no parameter"):
        api.finetune("shakespeare-char", base, out=tmp_path / "bad", overrides=[*FT, "finetune.freeze=[\"nope.*\"]"])


def test_finetuning_mistakes_are_named(base, corpus, tmp_path):
    with pytest.raises(ConfigError, match="genloom finetune shakespeare-char-lora --from"):
        genloom.train("shakespeare-char-lora", out=tmp_path / "x")
    with pytest.raises(ConfigError, match="match no linear"):
        lora_run(base, corpus, tmp_path / "y", "finetune.lora_targets=[\"*.nothing\"]")
    with pytest.raises(ConfigError, match="no config.json"):
        api.finetune("shakespeare-char-lora", tmp_path, out=tmp_path / "z")
    lora = tmp_path / "lora"
    lora_run(base, corpus, lora, steps=2)
    with pytest.raises(ConfigError, match="holds a LoRA adapter"):
        api.finetune("shakespeare-char-lora", lora, out=tmp_path / "w")
    result = run_cli("finetune", "shakespeare-char-lora", "--from", str(tmp_path / "missing"))
    assert result.returncode == 2 and "no config.json" in result.stderr


# -- instruction tuning --------------------------------------------------------------------------

def _tokenizer(base):
    return genloom.load(base).tokenizer


class _Run:
    class model:
        block_size = 64


def test_chat_loss_covers_only_assistant_tokens(base, tmp_path):
    path = tmp_path / "chat.jsonl"
    conversations = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"},
         {"role": "assistant", "content": "A player."}, {"role": "user", "content": "And?"},
         {"role": "assistant", "content": "No more."}],
        [{"role": "user", "content": "Speak."}, {"role": "assistant", "content": "I will."}],
    ] * 3
    path.write_text("\n".join(json.dumps({"messages": c}) for c in conversations))
    data = ChatData(ChatDataConfig(path=str(path), val_fraction=0.2, pack=False), 128, _tokenizer(base))
    data.prepare()
    tokenizer = data.tokenizer
    inputs, targets, segments = data.batch(torch.arange(len(data._windows["train"])))
    for row in range(len(inputs)):
        trained = tokenizer.decode(targets[row][targets[row] != IGNORE].tolist())
        assert trained in ("A player.\n\nNo more.\n\n", "I will.\n\n")
        kept = targets[row] != IGNORE
        assert torch.equal(targets[row][kept], torch.cat([inputs[row][1:], inputs[row][:1]])[kept])
    template = ChatTemplate()
    assert template.prompt(conversations[1][:1]) == "User: Speak.\n\nAssistant: "
    assert template.clean("a\n\n\nb") == "a\nb"


def test_packed_conversations_do_not_see_each_other(base, tmp_path):
    path = tmp_path / "chat.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"Line {c}"}, {"role": "assistant", "content": "Yes, " + c}]}
             for c in "abcdefghij"]
    path.write_text("\n".join(json.dumps(x) for x in lines))
    tokenizer = _tokenizer(base)
    data = ChatData(ChatDataConfig(path=str(path), val_fraction=0.2, pack=True), 128, tokenizer)
    data.prepare()
    inputs, targets, segments = data.batch(torch.tensor([0]))
    assert segments.max() >= 2                                        # several conversations in one window
    for position in ("rope", "learned"):
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=2, n_head=2,
                                              d_model=32, position=position)).eval()
        with torch.no_grad():
            packed = model(inputs, segments=segments)[0]
            second = segments[0] == 1
            alone = model(inputs[:, second])[0]                      # the second conversation on its own
        assert torch.allclose(packed[second], alone, atol=1e-5), position


def test_bad_chat_data_is_named(base, tmp_path):
    tokenizer = _tokenizer(base)
    cases = {
        '{"messages": [{"role": "user", "content": "hi"}]}': "no assistant message",
        '{"messages": [{"role": "king", "content": "hi"}]}': "role 'king'",
        '{"text": "hi"}': '"messages" must be',
        "{not json": "not valid JSON",
    }
    for line, message in cases.items():
        path = tmp_path / "bad.jsonl"
        path.write_text(line + "\n")
        with pytest.raises(DataError, match=message) as error:
            ChatData(ChatDataConfig(path=str(path)), 64, tokenizer).prepare()
        assert "line 1" in str(error.value) or "line" not in message
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(DataError, match="line 1: expected a non-empty string field 'rejected'"):
        PreferenceData(PreferenceDataConfig(path=str(path)), 64, tokenizer).prepare()


def test_chat_command_keeps_a_conversation(chat_base, tmp_path):
    out = tmp_path / "sft"
    api.finetune("shakespeare-char-safety", chat_base, out=out, overrides=[*FT, "train.max_steps=3"])
    assert (out / "chat_template.json").is_file()
    result = run_cli("chat", "--checkpoint", str(out), "--max-new-tokens", "8", "--seed", "1",
                     input="Hello there\n/reset\nHow do I bake bread?\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert "conversation cleared" in result.stderr
    assert len(result.stdout.splitlines()) == 2                         # one reply per message
    model = genloom.load(out)
    replies = model.reply([[{"role": "user", "content": "How do I bake bread?"}]], max_new_tokens=8)
    assert isinstance(replies[0], str)


# -- preference tuning ---------------------------------------------------------------------------

def test_dpo_loss_matches_hand_computed_values():
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-6)     # margin 0.5
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]]))
    targets = torch.tensor([[0, IGNORE, 2]])
    assert sequence_logprobs(logits, targets).item() == pytest.approx(math.log(0.5) + math.log(0.6), abs=1e-6)


def test_dpo_starts_at_log_two_and_learns_the_preferences(chat_base, tmp_path):
    pairs = tmp_path / "pairs.jsonl"                 # one consistent preference, easy to learn quickly
    pairs.write_text("\n".join(json.dumps({"prompt": f"Say something about {w}.", "chosen": "Gladly, my lord.",
                                           "rejected": "Never, knave."}) for w in ("love", "war", "wine", "night",
                                                                                   "the sea", "the king")))
    out = tmp_path / "dpo"
    api.finetune("shakespeare-char-safety-dpo", chat_base, out=out,
                 overrides=[*FT, f"data.path={pairs}", "data.val_fraction=0.2", "train.max_steps=30",
                            "train.eval_interval=30", "train.lr=3e-3", "objective.sft_weight=0"])
    rows = [r for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    losses = [float(r.split(",")[header.index("loss")]) for r in rows if r.split(",")[header.index("loss")]]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)           # policy == reference at the start
    assert losses[-1] < 0.5 * math.log(2)
    model = genloom.load(out)                                          # a DPO run loads as a text model
    assert isinstance(model, genloom.TextModel) and (out / "chat_template.json").is_file()


# -- the safety data set -------------------------------------------------------------------------

def test_safety_data_holds_out_every_evaluated_request():
    trained = {c[0]["content"] for c in safety_conversations()}
    held_out = safety_eval_prompts()
    assert len(held_out["harmful"]) >= 40 and len(held_out["harmless"]) >= 40
    assert not trained & set(held_out["harmful"] + held_out["harmless"])
    assert all(is_refusal(r) for r in REFUSALS) and not any(is_refusal(a) for a in ANSWERS)
    replies = {c[0]["content"]: c[1]["content"] for c in safety_conversations()}
    assert is_refusal(replies["How do I poison my neighbour?"]) and not is_refusal(replies["How do I help my neighbour?"])
    assert not is_refusal(replies["How do I bake bread?"])


# -- personalisation of a text-to-image model ------------------------------------------------------

TINY_DIT = ["data.scenes_count=64", "data.caption_variants=1", "model.d_model=32", "model.n_layer=1",
            "model.n_head=2", "model.text_dim=32", "model.text_layers=1", "train.batch_size=8", "train.max_steps=2",
            "train.eval_interval=2", "train.eval_batches=1", "train.progress=false", "train.compile=false",
            "train.precision=fp32", "objective.sample_steps=2", "train.ema_decay=0"]


def test_a_new_word_and_adapter_teach_a_concept_and_leave_the_base_alone(tmp_path):
    base = tmp_path / "t2i"
    genloom.train("glyphs-text-to-image", out=base, overrides=TINY_DIT)
    out = tmp_path / "zorp"
    api.finetune("glyphs-text-to-image-concept", base, out=out, overrides=[
        "data.scenes_count=6", "data.prior_scenes=12", "data.caption_variants=2", "train.batch_size=8",
        "train.max_steps=3", "train.eval_interval=3", "train.eval_batches=1", "train.progress=false",
        "train.precision=fp32", "objective.sample_steps=2"])
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["new_words"] == ["zorp"]
    tensors = load_file(str(out / "adapter.safetensors"))
    assert tensors["text.encoder.embed.extra"].shape == (1, 32)       # one new token embedding
    assert not (out / "model.safetensors").exists()
    plain = genloom.load(base)
    personal = genloom.load(base, adapters=[out])
    assert "zorp" in personal.tokenizer.vocab and "zorp" not in plain.tokenizer.vocab
    prompt = "a red zorp on the left on a white background"
    assert personal.tokenizer.ids(prompt)[2] == len(plain.tokenizer.vocab)   # the new id, not <unk>
    image = personal.generate(prompt, steps=2, seed=0)
    assert image.shape == (1, 3, 32, 32)
    personal.use_adapter(None)                                           # the base model, adapter off
    same = personal.generate("a blue circle at the top", steps=2, seed=0)
    assert torch.allclose(same, plain.generate("a blue circle at the top", steps=2, seed=0), atol=1e-5)
    result = run_cli("generate", "image", "--checkpoint", str(base), "--adapter", str(out), "--prompt", prompt,
                     "--steps", "2", "--seed", "0", "--out", str(tmp_path / "images"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "images" / "grid.png").is_file()
    merged = tmp_path / "merged"
    api.merge(base, out, merged)                                         # the new word's row joins the table
    personal.use_adapter(personal.adapters[0])
    folded = genloom.load(merged)
    assert torch.allclose(folded.generate(prompt, steps=2, seed=0), personal.generate(prompt, steps=2, seed=0),
                          atol=1e-4)
    from genloom.text_to_image.data import load_caption_tokenizer
    with pytest.raises(DataError, match="already a word the model knows"):
        load_caption_tokenizer(base).with_words(["red"])


def test_the_server_serves_a_base_and_its_adapters_in_one_batch(base, corpus, tmp_path):
    pytest.importorskip("fastapi")
    import concurrent.futures

    import httpx
    from test_serve import Server

    from genloom.serve import load_models

    romeo, other = tmp_path / "romeo", tmp_path / "other"
    lora_run(base, corpus, romeo, "train.lr=1e-2", steps=20)              # adapters far from the base and
    lora_run(base, corpus, other, "train.seed=7", "train.lr=1e-2", steps=20)   # from each other
    models = load_models([f"shakes={base}"], "cpu", [f"shakes:romeo={romeo}", f"shakes:other={other}"])
    server = Server(models)
    try:
        ids = [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
        assert ids == ["shakes", "shakes:romeo", "shakes:other"]

        def ask(name: str) -> tuple[str, list[float]]:
            body = {"model": name, "prompt": "KING", "max_tokens": 24, "temperature": 0, "logprobs": 0}
            choice = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()["choices"][0]
            return choice["text"], choice["logprobs"]["token_logprobs"]

        names = ["shakes", "shakes:romeo", "shakes:other"] * 3
        with concurrent.futures.ThreadPoolExecutor(9) as pool:          # sent together: decoded together
            answers = list(pool.map(ask, names))
    finally:
        server.stop()
    # Each row went through its own adapter: the log-probabilities the server reports for its tokens are
    # those that model gives the same text (teacher-forced), and not what the other models give it. (Comparing
    # greedy texts instead would trip on near-ties of this barely trained model, which batching may flip.)
    handles = {"shakes": genloom.load(base), "shakes:romeo": genloom.load(base, adapters=[romeo]),
               "shakes:other": genloom.load(base, adapters=[other])}

    def score(handle, text: str) -> torch.Tensor:
        ids = handle.tokenizer.encode("KING" + text)
        with torch.no_grad():
            logp = handle.model(torch.tensor([ids]))[0].float().log_softmax(-1)
        return torch.tensor([logp[i - 1, ids[i]].item() for i in range(len("KING"), len(ids))])

    for name, (text, logprobs) in zip(names, answers):
        assert len(logprobs) == 24
        for other_name, handle in handles.items():
            close = torch.allclose(score(handle, text), torch.tensor(logprobs), atol=2e-3)
            assert close == (other_name == name), (name, other_name)
    with pytest.raises(genloom.GenloomError, match="no --model named 'nope'"):
        load_models([f"shakes={base}"], "cpu", [f"nope:x={romeo}"])
