"""The OpenAI request fields against a real server with the official client: every field genloom does not
implement is a 400 naming it; the sampling fields (logit_bias, penalties, stop, seed, n) act per row."""

from __future__ import annotations

import concurrent.futures
import json

import pytest
import torch
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
    ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions", "an OpenAI field genloom does not implement"),
    ("/v1/chat/completions", {"prediction": {"type": "content", "content": "x"}}, "prediction", "OpenAI field"),
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
    with pytest.raises(openai.BadRequestError) as caught:     # the plain template writes no names: not dropped
        client.chat.completions.create(model="m", max_tokens=2, messages=[{"role": "user", "content": "hi",
                                                                            "name": "ann"}])
    assert caught.value.body["param"] == "messages[0].name" and "ignored" in caught.value.body["message"]
    done = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                          user="someone", seed=1)
    assert done.choices[0].finish_reason in ("length", "stop")


def _token(handle, char: str) -> int:
    (token,) = handle.tokenizer.encode(char)
    return token


def test_logit_bias_forces_or_bans_a_token_per_row_in_one_batch(client, handle):
    z = _token(handle, "z")
    body = dict(model="m", prompt="ROMEO:", max_tokens=12, seed=4, temperature=1.0)
    alone = client.completions.create(**body).choices[0].text
    with concurrent.futures.ThreadPoolExecutor(2) as pool:                   # decoded in the same batches
        forced = pool.submit(client.completions.create, **body, logit_bias={str(z): 100})
        plain = pool.submit(client.completions.create, **body)
        assert forced.result().choices[0].text == "z" * 12
        assert plain.result().choices[0].text == alone                      # the other row kept its settings
    greedy = client.completions.create(model="m", prompt="ROMEO:", max_tokens=20, temperature=0).choices[0].text
    banned = {str(_token(handle, c)): -100 for c in set(greedy)}
    other = client.completions.create(model="m", prompt="ROMEO:", max_tokens=20, temperature=0,
                                      logit_bias=banned).choices[0].text
    assert len(other) == 20 and not set(other) & set(greedy)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="m", prompt="x", max_tokens=2, logit_bias={"999999": 5})
    assert caught.value.body["param"] == "logit_bias"


def test_presence_and_frequency_penalties_match_their_closed_form_on_the_models_logits(handle):
    from genloom.lm.batching import ContinuousBatch, Sequence
    from genloom.lm.decoding import Sampling

    model, prompt = handle.model, handle.tokenizer.encode("To be or")
    settings = [Sampling(temperature=0, frequency_penalty=1.5, presence_penalty=0.7),
                Sampling(temperature=0, presence_penalty=-2.0), Sampling(temperature=0)]
    batch = ContinuousBatch(model)
    batch.add([Sequence(list(prompt), s, torch.Generator().manual_seed(0)) for s in settings])
    for _ in range(12):
        batch.step()
    for row, sampling in zip(batch.rows, settings):
        tokens, counts = list(prompt), torch.zeros(model.config.vocab_size)
        with torch.no_grad():
            for _ in range(12):                                             # no cache: the model's own logits
                logits = model(torch.tensor([tokens]))[0, -1].float()
                logits = logits - sampling.frequency_penalty * counts - sampling.presence_penalty * (counts > 0)
                tokens.append(int(logits.argmax()))
                counts[tokens[-1]] += 1
        assert row.tokens == tokens
    assert batch.rows[0].tokens != batch.rows[2].tokens                     # the penalty changed the text


def test_penalised_logits_in_closed_form():
    from genloom.lm.decoding import Sampling, process_logits

    logits = torch.randn(2, 7)
    counts = torch.tensor([[0, 1, 3, 0, 0, 0, 2], [1, 0, 0, 0, 0, 0, 0]], dtype=torch.float)
    out = process_logits(logits, Sampling(presence_penalty=0.5, frequency_penalty=0.25, logit_bias={3: 2.0}),
                         counts=counts)
    expected = logits - 0.25 * counts - 0.5 * (counts > 0) + torch.tensor([0, 0, 0, 2.0, 0, 0, 0])
    assert torch.allclose(out, expected)


def test_seed_reproduces_n_gives_n_choices_and_stop_takes_four(client):
    body = dict(model="m", messages=[{"role": "user", "content": "Speak."}], max_tokens=10, temperature=1.0)
    three = client.chat.completions.create(**body, n=3, seed=11)
    again = client.chat.completions.create(**body, n=3, seed=11)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert [c.message.content for c in three.choices] == [c.message.content for c in again.choices]
    second = client.chat.completions.create(**body, seed=12).choices[0].message.content
    assert three.choices[1].message.content == second                      # choice j is seed + j
    stops = client.completions.create(model="m", prompt="A", max_tokens=40, seed=2, stop=["e", "a", "o", "\n"])
    assert not set(stops.choices[0].text) & set("eao\n")
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="m", prompt="A", max_tokens=4, stop=list("abcde"))
    assert caught.value.body["param"] == "stop"


def test_echo_with_logprobs_and_max_tokens_0_scores_the_prompt(client, handle):
    prompt = "MACBETH:\nSo foul and fair"
    ids = handle.tokenizer.encode(prompt)
    done = client.completions.create(model="m", prompt=prompt, echo=True, logprobs=3, max_tokens=0)
    by_ids = client.completions.create(model="m", prompt=ids, echo=True, logprobs=3, max_tokens=0)
    choice = done.choices[0]
    assert choice.text == prompt and done.usage.completion_tokens == 0
    lp = choice.logprobs
    assert "".join(lp.tokens) == prompt and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset == [len("".join(lp.tokens[:k])) for k in range(len(ids))]
    with torch.no_grad():
        expected = handle.model(torch.tensor([ids]))[0].float().log_softmax(-1)
    for k in range(1, len(ids)):
        assert abs(lp.token_logprobs[k] - float(expected[k - 1, ids[k]])) < 1e-5
        top = sorted(expected[k - 1].tolist(), reverse=True)[:3]
        assert len(lp.top_logprobs[k]) <= 3 and abs(max(lp.top_logprobs[k].values()) - top[0]) < 1e-5
    assert by_ids.choices[0].logprobs.token_logprobs == lp.token_logprobs
    one = client.completions.create(model="m", prompt=prompt, echo=True, logprobs=1, max_tokens=1, temperature=0)
    assert len(one.choices[0].logprobs.tokens) == len(ids) + 1                # the prompt, then the new token
    assert one.choices[0].logprobs.token_logprobs[:len(ids)] == pytest.approx(lp.token_logprobs, abs=1e-6)
    long = client.completions.create(model="m", prompt="So foul and fair a day I have not seen. " * 3, echo=True,
                                     logprobs=0, max_tokens=0)                 # longer than the context (32)
    values = long.choices[0].logprobs.token_logprobs
    assert len(values) == 120 and all(v < 0 for v in values[1:])


def test_chat_top_logprobs_are_filled(client):
    done = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Speak."}], max_tokens=6,
                                          temperature=0, logprobs=True, top_logprobs=3)
    content = done.choices[0].logprobs.content
    assert len(content) == 6
    for item in content:
        assert len(item.top_logprobs) == 3 and item.top_logprobs[0].token == item.token
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob)
        assert [t.logprob for t in item.top_logprobs] == sorted([t.logprob for t in item.top_logprobs], reverse=True)


def test_a_streamed_completion_echoes_and_gives_logprobs_or_refuses_scoring(client):
    chunks = list(client.completions.create(model="m", prompt="To be", max_tokens=5, seed=2, logprobs=2,
                                            stream=True))
    whole = client.completions.create(model="m", prompt="To be", max_tokens=5, seed=2, logprobs=2)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    streamed = [c.choices[0].logprobs.tokens[0] for c in chunks if c.choices[0].logprobs]
    assert streamed == whole.choices[0].logprobs.tokens
    echoed = list(client.completions.create(model="m", prompt="To be", max_tokens=5, seed=2, echo=True, stream=True))
    assert "".join(c.choices[0].text for c in echoed) == "To be" + whole.choices[0].text
    for change, param in (({"echo": True, "logprobs": 1}, "echo"), ({"max_tokens": 0}, "max_tokens")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model="m", prompt="To be", stream=True, **{"max_tokens": 5, **change})
        assert caught.value.body["param"] == param and "stream" in caught.value.body["message"]
