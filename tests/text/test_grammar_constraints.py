"""Constrained decoding from the Python API and `genloom generate text --json-schema/--regex/--choice`:
every sample matches its grammar, even from a barely trained model; what cannot be enforced is refused."""

from __future__ import annotations

import json
import re

import pytest
from conftest import TINY, run_cli

from genloom import api, load

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from genloom.lm.constraints import Grammar, GrammarError  # noqa: E402

SCHEMA = {"type": "object", "properties": {"who": {"enum": ["macbeth", "banquo"]},
                                           "count": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "lines": {"type": "array", "items": {"type": "string", "maxLength": 5},
                                                     "maxItems": 2}},
          "required": ["who", "count", "lines"], "additionalProperties": False}


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("grammar") / "run"
    api.train("shakespeare-char", out=out, overrides=[f"data.path={corpus}", *TINY, "data.tokenizer=bpe",
                                                      "data.vocab_size=300", "train.max_steps=10"])
    return out


def test_regex_choice_and_schema_from_the_python_api(run):
    model = load(run)
    for done in model.complete("ROMEO:", grammar=Grammar("regex", r"[A-Z][a-z]{2,6}!"), num_samples=8, seed=1,
                               max_new_tokens=20):
        assert re.fullmatch(r"[A-Z][a-z]{2,6}!", done.text) and done.finish_reason == "stop", done.text
    picks = model.generate("Who?", grammar=Grammar("choice", ["yes", "no", "perhaps"]), num_samples=8, seed=2,
                           max_new_tokens=10)
    assert set(picks) <= {"yes", "no", "perhaps"}
    for text in model.generate("", grammar=Grammar("json_schema", SCHEMA), num_samples=10, seed=3,
                               max_new_tokens=120):
        jsonschema.validate(json.loads(text), SCHEMA)
    with pytest.raises(GrammarError, match="uniqueItems"):
        model.generate("", grammar=Grammar("json_schema", {"type": "array", "uniqueItems": True}))


def test_stream_keeps_to_a_grammar_as_complete_does(run):
    model = load(run)
    grammar = Grammar("json_schema", SCHEMA)
    for seed in range(3):
        streamed = list(model.stream("", grammar=grammar, seed=seed, max_new_tokens=120))
        jsonschema.validate(json.loads("".join(streamed)), SCHEMA)
        assert "".join(streamed) == model.generate("", grammar=grammar, seed=seed, max_new_tokens=120)[0]
    with pytest.raises(GrammarError, match="uniqueItems"):             # refused before the first piece
        model.stream("", grammar=Grammar("json_schema", {"type": "array", "uniqueItems": True}))


def test_generate_text_json_schema_file(run, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    result = run_cli("generate", "text", "--checkpoint", str(run), "--json-schema", str(schema), "--seed", "4",
                     "--max-new-tokens", "120", "--num-samples", "2")
    assert result.returncode == 0, result.stderr
    for line in result.stdout.strip().splitlines():
        jsonschema.validate(json.loads(line), SCHEMA)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "string", "format": "no-such-format"}))
    result = run_cli("generate", "text", "--checkpoint", str(run), "--json-schema", str(bad))
    assert result.returncode != 0 and "no-such-format" in result.stderr
