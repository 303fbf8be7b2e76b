"""builtin:passkey and fine-tuning at a longer context: the generator puts the key where it says and asks for it,
its text and the eval's prompts tokenize the needle alike, a fine-tune with YaRN at 4x the context records the
scaling and loads it back, and contexts a model cannot reach are refused in one line."""

from __future__ import annotations

import itertools

import pytest
import torch

from genloom.core.errors import ConfigError, DataError
from genloom.lm.tokenizers import TextTokenizer
from genloom.text.limit_measures import FILLER_SENTENCES, NEEDLE, QUESTION, passkey_prompt
from genloom.text.passkey import PasskeySource, passkey_examples


def test_examples_hold_the_key_at_their_depth_and_end_with_its_answer():
    lines = ["Shall I compare thee to a summer's day?", "Thou art more lovely and more temperate."]
    examples = list(itertools.islice(passkey_examples(3, 600, 10**9, lines), 200))
    assert examples == list(itertools.islice(passkey_examples(3, 600, 10**9, lines), 200))   # seeded
    assert [e.key for e in examples] != [e.key for e in itertools.islice(passkey_examples(4, 600, 10**9, lines), 200)]
    kinds = set()
    for e in examples:
        needle = NEEDLE.format(key=e.key)
        before = " ".join(e.before)
        assert e.text.index(needle) == (len(before) + 1 if before else 0)        # after exactly `before`
        assert e.text.count(needle) == 1 and e.text.endswith(f"{QUESTION} {e.key}.")
        assert e.depth == len(e.before) / max(len(e.before) + len(e.after), 1)
        assert len(e.key) == 5 and e.key.isdigit() and len(e.text) <= 600 + 10
        kinds.add("eval" if set(e.before + e.after) <= set(FILLER_SENTENCES) else "shakespeare")
    depths = [e.depth for e in examples if e.before or e.after]
    assert min(depths) < 0.05 and max(depths) > 0.7 and 0.15 < sum(depths) / len(depths) < 0.45
    # the distance to the question rises in density: far needles are drawn more often than near ones
    after = [len(" ".join(e.after)) for e in examples]
    assert sum(a > 300 for a in after) > 2 * sum(a < 150 for a in after) > 0
    assert kinds == {"eval", "shakespeare"}


def test_examples_grow_with_the_context_and_tokenize_like_the_eval_prompts():
    short = PasskeySource("builtin:passkey", 128, total_chars=200_000)
    long = PasskeySource("builtin:passkey", 512, total_chars=200_000)
    assert short.fingerprint() != long.fingerprint()
    longest = [max(len(e.text) for e in s.examples()) for s in (short, long)]
    assert longest[0] <= 128 * 3.5 + 10 < longest[1] <= 512 * 3.5 + 10
    text = "".join(itertools.islice(short.chunks(), 500))
    tok = TextTokenizer.train_bpe([text], 400)
    example = next(short.examples())
    ids, answer = passkey_prompt(tok, 100, example.key, 0.5)
    assert len(ids) == 100 and answer == f" {example.key}" and tok.decode(ids).endswith(QUESTION)
    needle = tok.encode(" " + NEEDLE.format(key=example.key))
    trained = tok.encode(example.text)
    found = [i for i in range(len(ids) - len(needle)) if ids[i:i + len(needle)] == needle]
    assert found and any(trained[i:i + len(needle)] == needle for i in range(len(trained)))
    assert tok.decode(tok.encode(example.text + " " + tok.decode(ids))).endswith(QUESTION)


def test_finetune_at_4x_with_yarn_records_the_scaling_and_refuses_too_long(tmp_path):
    from conftest import TINY, one_line_error, run_cli

    from genloom import api, load
    from genloom.nn.attention import RopeScaling, RotaryEmbedding

    base = tmp_path / "base"
    api.train("passkey", out=base, overrides=["data.tokenizer=char", *TINY, "train.max_steps=2"])
    train = [o for o in TINY if o.startswith("train.")]
    out = tmp_path / "yarn"
    api.finetune("passkey-yarn", base, out, overrides=[*train, "train.max_steps=2", "model.block_size=128"])
    handle = load(out)
    cfg = handle.model.config
    assert (cfg.block_size, cfg.rope_scaling, cfg.rope_factor, cfg.rope_original_context) == (128, "yarn", 4.0, 32)
    expected = RotaryEmbedding(cfg.head_dim, 128, cfg.rope_theta, RopeScaling("yarn", 4.0, 32))
    unscaled = RotaryEmbedding(cfg.head_dim, 128, cfg.rope_theta)
    assert torch.allclose(handle.model.rotary.cos, expected.cos) and not torch.allclose(expected.cos, unscaled.cos)
    assert len(handle.complete(["The pass key is"], max_new_tokens=4)[0].text) > 0
    # no scaling at 4x: the base's context is still recorded, so --task context measures multiples of it
    api.finetune("passkey-yarn", base, tmp_path / "plain", overrides=[
        *train, "train.max_steps=1", "model.rope_scaling=none", "model.block_size=128"])
    plain = load(tmp_path / "plain").model.config
    assert (plain.block_size, plain.rope_scaling, plain.rope_original_context) == (128, "none", 32)
    with pytest.raises(ConfigError, match=r"longer than .* can be scaled to \(64x its training context of 32: 2048\)"):
        api.finetune("passkey-yarn", base, tmp_path / "no", overrides=["model.block_size=4096"])
    one_line_error(run_cli("finetune", "passkey-yarn", "--from", str(out), "--out", str(tmp_path / "no1"),
                           "--set", "model.block_size=2560"), "model.block_size: 2560 tokens is longer than")
    with pytest.raises(ConfigError, match=r"model.n_layer = '7' \(--set\): a fine-tune keeps the model of .*it may change"):
        api.finetune("passkey-yarn", base, tmp_path / "no4", overrides=["model.n_layer=7"])
    api.finetune("passkey-yarn", base, tmp_path / "same", overrides=[*train, "train.max_steps=1", "model.n_layer=2",
                                                                       "model.block_size=128"])   # unchanged: fine
    learned = tmp_path / "learned"
    api.train("passkey", out=learned, overrides=["data.tokenizer=char", *TINY, "train.max_steps=1",
                                                 "model.position=learned"])
    with pytest.raises(ConfigError, match="learned positions, which cannot be stretched"):
        api.finetune("passkey-yarn", learned, tmp_path / "no2")
    with pytest.raises(DataError, match="did you mean builtin:passkey"):
        api.train("passkey", out=tmp_path / "no3", overrides=["data.path=builtin:passkeys", *TINY])
