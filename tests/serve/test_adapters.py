"""LoRA adapters loaded and unloaded on a running server (vLLM's /v1/load_lora_adapter and
/v1/unload_lora_adapter): results change only for the requests that name an adapter, also inside one
continuous batch; unloading makes the name 404; adapters that do not fit the base are refused; the API key
guards both endpoints."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import time

import pytest
import torch
from conftest import tiny
from safetensors.torch import load_file, save_file

from genloom import api, load
from genloom.nn.lora import adapter_names

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from test_serve import Server  # noqa: E402

KEY = "sesame"
FT = ["train.batch_size=8", "train.warmup_steps=1", "train.eval_interval=3", "train.eval_batches=1",
      "train.log_interval=1", "train.sample_length=10", "train.precision=fp32", "train.progress=false",
      "train.compile=false", "train.max_steps=3"]


def _restyled(adapter, out, seed: int, scale: float):
    """A copy of `adapter` with other (random, larger) low-rank matrices: another adapter for the same base."""
    shutil.copytree(adapter, out)
    generator = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(v.shape, generator=generator) * scale for k, v in load_file(str(adapter /
                                                                                            "adapter.safetensors")).items()}
    save_file(tensors, str(out / "adapter.safetensors"))
    (out / "checksums.json").unlink()               # rewritten by hand: no recorded sums to check
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("adapters")
    api.train("shakespeare-char", out=root / "base", overrides=tiny(corpus, "train.max_steps=10",
                                                                    "train.eval_interval=10"))
    api.finetune("shakespeare-char-lora", root / "base", out=root / "lora", overrides=[f"data.path={corpus}", *FT])
    return {"base": root / "base", "a": _restyled(root / "lora", root / "a", 1, 0.3),
            "b": _restyled(root / "lora", root / "b", 2, 0.3), "lora": root / "lora", "root": root}


@pytest.fixture(scope="module")
def handle(folders):
    return load(folders["base"])


@pytest.fixture(scope="module")
def server(handle):
    s = Server({"shakes": handle}, api_key=KEY)
    yield s
    s.stop()


def _post(server, path: str, key: str | None = KEY, **body) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=60)


PROMPTS = ["ROMEO:", "JULIET:", "First Witch:"]


def _texts(client, jobs):
    """(model, prompt index, seed) -> the completion's text; sampled at temperature 0.8 with that seed."""
    def one(job):
        model, i, seed = job
        return client.completions.create(model=model, prompt=PROMPTS[i], max_tokens=16, seed=seed,
                                         temperature=0.8).choices[0].text
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(one, jobs))


def test_loaded_adapters_change_only_the_requests_that_name_them(server, folders, handle):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    jobs = [(m, i, 10 + i) for m in ("shakes", "a", "b") for i in range(len(PROMPTS))]
    before = [_texts(client, [job])[0] for job in jobs if job[0] == "shakes"]
    for name in ("a", "b"):
        answer = _post(server, "/v1/load_lora_adapter", lora_name=name, lora_path=str(folders[name]))
        assert answer.status_code == 200 and answer.text == f"Success: LoRA adapter '{name}' added successfully."
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"shakes", "a", "b"} and cards["a"].model_extra["adapter"] == "a"
    alone = [_texts(client, [job])[0] for job in jobs]                       # one request at a time
    assert alone[:3] == before                                               # the base is untouched
    assert alone[3:6] != before and alone[6:] != before and alone[3:6] != alone[6:]
    together = _texts(client, jobs)                                          # nine requests in one batch
    assert together == alone
    embedded = [client.embeddings.create(model=m, input="ROMEO:", encoding_format="float").data[0].embedding
                for m in ("shakes", "a")]
    assert embedded[0] != embedded[1]
    # Unloading: the name is gone (404), the others answer as before.
    answer = _post(server, "/v1/unload_lora_adapter", lora_name="a")
    assert answer.status_code == 200 and answer.text == "Success: LoRA adapter 'a' removed successfully."
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="a", prompt="ROMEO:", max_tokens=4)
    assert _post(server, "/v1/unload_lora_adapter", lora_name="a").status_code == 404
    assert "a" not in adapter_names(handle.model) and "a" not in handle.adapters
    assert _texts(client, jobs[:3] + jobs[6:]) == alone[:3] + alone[6:]
    # Unloading waits for the rows decoding with the adapter: a long stream under way ends as it would alone.
    long = dict(model="b", prompt="ROMEO:", max_tokens=800, seed=5, temperature=0.8)
    whole = client.completions.create(**long).choices[0].text
    stream = client.completions.create(**long, stream=True)
    pieces = [next(stream).choices[0].text]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        unloading = pool.submit(_post, server, "/v1/unload_lora_adapter", lora_name="b")
        time.sleep(0.1)
        assert not unloading.done()                                          # the stream still runs
        pieces += [chunk.choices[0].text for chunk in stream]
        assert unloading.result().status_code == 200
    assert "".join(pieces) == whole
    assert adapter_names(handle.model) == [] and _texts(client, jobs[:3]) == before


def _broken(folders, name: str, meta=None, tensors=None, keep_sums: bool = False):
    out = folders["root"] / name
    shutil.copytree(folders["lora"], out)
    if meta is not None:
        path = out / "adapter.json"
        path.write_text(json.dumps(meta(json.loads(path.read_text()))))
    if tensors is not None:
        save_file(tensors(load_file(str(out / "adapter.safetensors"))), str(out / "adapter.safetensors"))
        if not keep_sums:
            (out / "checksums.json").unlink()
    return out


def test_adapters_that_do_not_fit_the_base_and_bad_names_are_refused(server, folders, handle):
    def refused(status, words, key=KEY, path="/v1/load_lora_adapter", **body):
        answer = _post(server, path, key, **body)
        assert answer.status_code == status, answer.text
        assert all(w in answer.json()["error"]["message"] for w in words), answer.text

    lora = str(folders["lora"])
    refused(401, ["API key"], key=None, lora_name="x", lora_path=lora)
    refused(401, ["API key"], key=None, path="/v1/unload_lora_adapter", lora_name="x")
    refused(404, ["not a folder"], lora_name="x", lora_path=str(folders["root"] / "nowhere"))
    refused(400, ["already served"], lora_name="shakes", lora_path=lora)
    refused(400, ["lora_name"], lora_name="no/slash", lora_path=lora)
    refused(404, ["base_model"], lora_name="x", lora_path=lora, base_model="nobody")
    refused(400, ["lora_int_id"], lora_name="x", lora_path=lora, lora_int_id=3)
    refused(400, ["not an adapter folder"], lora_name="x", lora_path=str(folders["base"]))
    other = _broken(folders, "other-model", meta=lambda m: {**m, "model": {**m["model"], "d_model": 64}})
    refused(400, ["another kind of model", "d_model"], lora_name="x", lora_path=str(other))
    weights = _broken(folders, "other-weights", meta=lambda m: {**m, "base_fingerprint": "0" * 16})
    refused(400, ["exact weights"], lora_name="x", lora_path=str(weights))
    shapes = _broken(folders, "other-shapes", tensors=lambda t: {k: (v[:2] if k.endswith("lora_a") else
                                                                     v[:, :2]).contiguous() for k, v in t.items()})
    refused(400, ["does not fit", "lora_a"], lora_name="x", lora_path=str(shapes))
    damaged = _broken(folders, "damaged", tensors=lambda t: {k: v + 1 for k, v in t.items()}, keep_sums=True)
    refused(400, ["damaged"], lora_name="x", lora_path=str(damaged))
    whole = _broken(folders, "whole", meta=lambda m: {**m, "train_also": ["embed.weight"]})
    refused(400, ["whole parameters"], lora_name="x", lora_path=str(whole))
    missing = _broken(folders, "missing")
    (missing / "adapter.safetensors").unlink()
    refused(400, ["adapter.safetensors"], lora_name="x", lora_path=str(missing))
    refused(400, ["a model, not an adapter"], path="/v1/unload_lora_adapter", lora_name="shakes")
    refused(404, ["not loaded"], path="/v1/unload_lora_adapter", lora_name="x")
    assert adapter_names(handle.model) == [] and handle.adapters == []       # nothing was left half attached
    keyless = Server({"shakes": handle})
    try:
        answer = _post(keyless, "/v1/load_lora_adapter", key=None, lora_name="x", lora_path=lora)
        assert answer.status_code == 403 and "--api-key" in answer.json()["error"]["message"]
    finally:
        keyless.stop()
