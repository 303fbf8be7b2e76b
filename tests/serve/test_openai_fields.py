"""The OpenAI request fields against a real server with the official client: every field genloom does not
implement is a 400 naming it; the sampling fields (logit_bias, penalties, stop, seed, n) act per row."""

from __future__ import annotations

import json

import pytest
from conftest import tiny

from genloom import api, load

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from test_serve import Server  # noqa: E402

from genloom.serve.app import Limits  # noqa: E402


@pytest.fixture(scope="module")
def handle(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("fields") / "text"
    api.train("shakespeare-char", out=out, overrides=tiny(corpus, "train.max_steps=10"))
    return load(out)


@pytest.fixture(scope="module")
def server(handle):
    s = Server({"m": handle}, Limits(max_batch=16))
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("path, body, field, words", [
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools",
     "an OpenAI field genloom does not implement"),
    ("/v1/chat/completions", {"parallel_tool_calls": True}, "parallel_tool_calls", "OpenAI field"),
    ("/v1/chat/completions", {"temprature": 0.5}, "temprature", "not a field of this request"),
    ("/v1/completions", {"suffix": "x"}, "suffix", "OpenAI field"),
    ("/v1/completions", {"best_of": 3}, "best_of", "OpenAI field"),
    ("/v1/images/generations", {"quality": "hd"}, "quality", "OpenAI field"),
    ("/v1/images/generations", {"logprobs": 2}, "logprobs", "not a field"),
    ("/v1/chat/completions", {"stream_options": {"include_usage": True, "chunked": 1}}, "stream_options.chunked",
     "not a field"),
])
def test_a_field_genloom_does_not_implement_is_a_400_naming_it(server, path, body, field, words):
    base = {"model": "m", "prompt": "x"} if "chat" not in path else {"model": "m", "messages": [
        {"role": "user", "content": "hi"}]}
    response = httpx.post(server.url + path, json={**base, **body}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == field
    assert field in error["message"] and words in error["message"] and "accepts" in error["message"]


def test_the_official_client_sees_the_refusal_and_a_message_field_is_named(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={"guided_json": {}})
    assert caught.value.body["param"] == "guided_json"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", max_tokens=2, messages=[
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "audio": {"id": "a"}}])
    assert caught.value.body["param"] == "messages[1].audio" and "OpenAI field" in caught.value.body["message"]
    done = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                          user="someone", seed=1)
    assert done.choices[0].finish_reason in ("length", "stop")
