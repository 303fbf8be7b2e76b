"""Structured outputs through the server with the official client: `response_format` json_object and a
strict json_schema (nested objects, enums, arrays, required fields) always parse and validate, across 20
seeds, from a barely trained model; a schema the engine cannot enforce is refused before decoding."""

from __future__ import annotations

import json
import random

import pytest
from conftest import TINY

from genloom import api, load

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from test_serve import Server  # noqa: E402

from genloom.serve.app import Limits  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "home": {"type": "object", "properties": {"town": {"type": "string", "maxLength": 10},
                                                  "north": {"type": "boolean"}},
                 "required": ["town", "north"], "additionalProperties": False},
    },
    "required": ["name", "age", "colour", "tags", "home"],
    "additionalProperties": False,
}


def _corpus(path):
    """A little JSON to train on, so that a barely trained model already closes its strings."""
    rng, words = random.Random(0), "macbeth banquo duncan witch dagger castle night fair foul day".split()
    lines = [json.dumps({rng.choice(words): rng.choice([rng.choice(words), rng.randint(0, 99), True, None])
                         for _ in range(rng.randint(1, 3))}) for _ in range(3000)]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("structured")
    overrides = [f"data.path={_corpus(root / 'json.txt')}", *TINY, "data.tokenizer=bpe", "data.vocab_size=300",
                 "train.max_steps=30"]
    api.train("shakespeare-char", out=root / "run", overrides=overrides)
    s = Server({"m": load(root / "run")}, Limits(max_batch=16))
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _ask(client, response_format, seed, stream=False):
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Describe someone."}],
                                          max_tokens=300, temperature=1.0, seed=seed, stream=stream,
                                          response_format=response_format)


def test_a_strict_json_schema_always_validates_across_20_seeds(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    for seed in range(20):
        done = _ask(client, fmt, seed)
        text = done.choices[0].message.content
        jsonschema.validate(json.loads(text), SCHEMA)
        assert done.choices[0].finish_reason == "stop", text
    streamed = "".join(c.choices[0].delta.content or "" for c in _ask(client, fmt, 3, stream=True) if c.choices)
    assert streamed == _ask(client, fmt, 3).choices[0].message.content


def test_json_mode_always_gives_a_json_object_across_20_seeds(client):
    for seed in range(20):
        text = _ask(client, {"type": "json_object"}, seed).choices[0].message.content
        assert isinstance(json.loads(text), dict), text


@pytest.mark.parametrize("schema, words", [
    ({"type": "object", "properties": {"a": {"type": "string", "format": "no-such-format"}}}, "no-such-format"),
    ({"type": "string", "pattern": "(?<=a)b"}, "cannot be enforced"),
])
def test_a_schema_the_engine_cannot_enforce_is_refused_before_decoding(client, schema, words):
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(client, {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}, 0)
    assert caught.value.body["param"].startswith("response_format") and words in caught.value.body["message"]
