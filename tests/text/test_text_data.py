import json
import logging

import numpy as np
import pytest
import torch

from genloom.core.errors import DataError
from genloom.core.sources import markdown_play_to_text, open_text_source
from genloom.lm.tokenizers import TextTokenizer
from genloom.text.data import TextData, TextDataConfig


def test_markdown_play_becomes_plain_play_text():
    md = ("# Othello\n\n## ACT I\n\n### SCENE I. Venice. A street.\n\n_Enter RODERIGO and IAGO_\n\n"
          "**RODERIGO**  \nTush! never tell me;  \nThat thou, Iago\n\n**IAGO**  \n'Sblood, _\\[Aside]_ but\\--you\n")
    text = markdown_play_to_text(md)
    assert text == ("Othello\n\nACT I\n\nSCENE I. Venice. A street.\n\nEnter RODERIGO and IAGO\n\n"
                    "RODERIGO:\nTush! never tell me;\nThat thou, Iago\n\nIAGO:\n'Sblood, [Aside] but--you\n")


def test_builtin_corpus_has_no_markdown_and_looks_like_a_play():
    text = "".join(open_text_source("builtin:shakespeare").chunks())
    assert 4_500_000 < len(text) < 5_400_000
    assert "**" not in text and "#" not in text and "_" not in text
    assert "\nHAMLET:\n" in text and "\nMACBETH:\n" in text


def test_char_and_bpe_tokenizers_round_trip(corpus, tmp_path):
    text = corpus.read_text()
    for tok in (TextTokenizer.train_char(text), TextTokenizer.train_bpe([text], 400)):
        ids = tok.encode(text[:3000])
        assert tok.decode(ids) == text[:3000]
        tok.save(tmp_path / "tokenizer.json")
        again = TextTokenizer.load(tmp_path / "tokenizer.json")
        assert again.kind == tok.kind and again.encode(text[:500]) == ids[: len(again.encode(text[:500]))]
    char = TextTokenizer.train_char("abc\n")
    assert char.decode(char.encode("ab\nz")) == "ab\n"  # unseen 'z' is <unk>, decoded as nothing


def test_split_is_the_last_tenth_of_the_characters(corpus):
    text = corpus.read_text()
    data = TextData(TextDataConfig(path=str(corpus)), block_size=16)
    data.prepare()
    cut = int(len(text) * 0.9)
    assert data.meta["train_chars"] == cut and data.meta["val_chars"] == len(text) - cut
    assert data.tokenizer.decode(np.asarray(data._arrays["val"]).tolist()) == text[cut:]
    assert isinstance(data._arrays["train"], np.memmap) and data._arrays["train"].dtype == np.uint16


def test_batches_are_shifted_windows(corpus):
    data = TextData(TextDataConfig(path=str(corpus)), block_size=16)
    data.prepare()
    g = torch.Generator().manual_seed(0)
    x, y = data.batch(data.sample_indices(g, 4))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(data.val_indices(5), data.val_indices(5))


def test_folder_and_jsonl_sources(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("hello world\n" * 50)
    (folder / "b.txt").write_text("goodbye moon\n" * 50)
    text = "".join(open_text_source(str(folder)).chunks())
    assert text.startswith("hello world") and "goodbye moon" in text
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"text": "first doc"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    assert "".join(open_text_source(str(jsonl)).chunks()) == "first doc\n\nsecond"
    jsonl.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl, line 2: expected an object with a string field \"text\""):
        "".join(open_text_source(str(jsonl)).chunks())


def test_missing_and_empty_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"data\.path: .*nope\.txt does not exist"):
        open_text_source(str(tmp_path / "nope.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.txt is empty"):
        open_text_source(str(empty))
    with pytest.raises(DataError, match="holds no text files"):
        (tmp_path / "void").mkdir()
        open_text_source(str(tmp_path / "void"))


def test_corpus_too_short_for_the_context(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be\n" * 3)
    data = TextData(TextDataConfig(path=str(short)), block_size=64)
    with pytest.raises(DataError, match=r"split .* has \d+ tokens, but a training window needs 65"):
        data.prepare()


def test_invalid_utf8_is_replaced_with_a_warning(tmp_path, caplog):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(("caf\xe9 ol\xe9 " * 400).encode("latin-1"))
    data = TextData(TextDataConfig(path=str(bad)), block_size=8)
    with caplog.at_level(logging.WARNING):
        data.prepare()
    assert "800 bytes are not valid UTF-8" in caplog.text and "latin1.txt" in caplog.text
    assert "\ufffd" in data.tokenizer.hf.get_vocab()
