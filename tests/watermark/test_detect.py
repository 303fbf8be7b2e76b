"""Detection everywhere: file types by their bytes, fuzzed input, `genloom generate text --watermark` ->
`genloom detect`, the Python API, and the server (`--watermark KEY`, the request field, POST /v1/detect)."""

from __future__ import annotations

import base64
import io
import random

import numpy as np
import pytest

from genloom.core.errors import GenloomError
from genloom.watermark.audio import AudioWatermark
from genloom.watermark.files import detect_bytes, kind_of
from genloom.watermark.text import TextWatermark

KEY = "test-key-0123"


def _wav(wave: np.ndarray, rate: int = 16_000) -> bytes:
    from scipy.io import wavfile

    buffer = io.BytesIO()
    wavfile.write(buffer, rate, (np.clip(wave, -1, 1) * 32767).astype(np.int16))
    return buffer.getvalue()


def _png(size: int = 64) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _sound(seconds=1.5, seed=0):
    from test_audio_watermark import speechlike
    return speechlike(seconds, 16_000, seed)


def test_the_kind_comes_from_the_bytes_not_the_name():
    assert kind_of(_wav(np.zeros(100))) == "wav"
    assert kind_of(_png()) == "png"
    assert kind_of(b"\xff\xd8\xff\xe0rest") == "jpeg"
    assert kind_of(b"\xff\xfb\x90\x00") == kind_of(b"ID3\x03") == "mp3" and kind_of(b"OggS\x00") == "ogg"
    assert kind_of("plain words, é".encode()) == "text"
    for bad in (b"\x00\x01\x02binary", b"\xc3\x28 not utf-8"):
        with pytest.raises(GenloomError, match="x.txt: is not text .* genloom detect reads those"):
            kind_of(bad, "x.txt")
    with pytest.raises(GenloomError, match="x.txt: the file is empty"):
        kind_of(b"", "x.txt")


def test_detection_never_crashes_on_arbitrary_or_truncated_bytes():
    """Random bytes, real headers with garbage after them and every prefix of real files: each ends in a
    result or one GenloomError, never another exception."""
    rng = random.Random(0)
    real = [_wav(_sound(0.5)), _png(), b"RIFF\x10\x00\x00\x00WAVEfmt ", b"\x89PNG\r\n\x1a\n", b"OggS\x00\x02",
            b"fLaC\x00\x00\x00\x22", b"ID3\x03\x00\x00\x00\x00\x00\x00", b"\xff\xd8\xff\xe0\x00\x10JFIF"]
    samples = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))) for _ in range(150)]
    samples += [head + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))) for head in real for _ in range(8)]
    samples += [data[:cut] for data in real[:2] for cut in sorted(rng.sample(range(1, len(data)), 25))]
    outcomes = {"result": 0, "error": 0}
    for data in samples:
        try:
            result = detect_bytes(data, KEY, name="fuzz", encode=lambda text: [ord(c) % 256 for c in text])
            assert isinstance(result["marked"], bool)
            outcomes["result"] += 1
        except GenloomError as error:
            assert str(error).startswith("fuzz: ") or "--key" in str(error), error
            outcomes["error"] += 1
    assert outcomes["result"] and outcomes["error"]


def test_files_of_each_kind_are_read_and_scored():
    clip = _sound(2.0)
    marked = detect_bytes(_wav(AudioWatermark(KEY).mark(clip, 16_000)), KEY, name="a.wav")
    assert marked["kind"] == "wav" and marked["marked"]
    assert not detect_bytes(_wav(clip), KEY, name="b.wav")["marked"]
    with pytest.raises(GenloomError, match="too short for the audio mark"):
        detect_bytes(_wav(clip[:1000]), KEY, name="short.wav")
    with pytest.raises(GenloomError, match="give the tokenizer"):
        detect_bytes(b"some text", KEY, name="t.txt")
    with pytest.raises(GenloomError, match="--key: a watermark key is 8 to 256"):
        detect_bytes(b"some text", "short", name="t.txt")


class _Server:
    """uvicorn in a background thread serving `create_app(models, limits, watermark=...)`."""

    def __init__(self, models, limits, watermark=None):
        import socket
        import threading
        import time

        import httpx
        import uvicorn

        from genloom.serve.app import create_app

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(models, limits, watermark=watermark),
                                                    host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                httpx.get(f"{self.url}/health", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


# -- end to end: a tiny trained text model -------------------------------------------------------------
@pytest.fixture(scope="module")
def text_model(corpus, tmp_path_factory):
    from conftest import tiny

    from genloom import api, load

    out = tmp_path_factory.mktemp("watermark") / "run"
    api.train("shakespeare-char", out=out, overrides=tiny(corpus, "train.max_steps=5", "train.eval_interval=5"))
    return out, load(out)


def _detect_cli(*args: str, env: dict | None = None):
    """`genloom detect ARGS` in this process (typer's runner: no second start-up of torch)."""
    from typer.testing import CliRunner

    from genloom.cli import app

    return CliRunner().invoke(app, ["detect", *args], env=env)


def test_the_cli_marks_text_and_detect_finds_it_only_with_the_key(text_model, tmp_path):
    from conftest import run_cli

    path, _ = text_model
    made = run_cli("generate", "text", "--checkpoint", str(path), "--max-new-tokens", "200", "--seed", "3",
                   "--watermark", KEY, "--device", "cpu")
    assert made.returncode == 0, made.stderr
    assert KEY not in made.stdout + made.stderr
    (tmp_path / "marked.txt").write_text(made.stdout)
    (tmp_path / "sound.wav").write_bytes(_wav(_sound(0.1)))
    found = _detect_cli("--key", KEY, "--tokenizer", str(path), str(tmp_path / "marked.txt"))
    assert found.exit_code == 0, found.output
    assert ": marked (text; " in found.stdout and KEY not in found.stdout, found.stdout
    other = _detect_cli("--tokenizer", str(path), str(tmp_path / "marked.txt"),
                        env={"GENLOOM_WATERMARK_KEY": "another-key-456"})
    assert ": not marked (text; " in other.stdout, other.output
    for args, words in [(["--key", KEY, str(tmp_path / "sound.wav")], "too short for the audio mark"),
                        (["--key", "bad key", str(tmp_path / "marked.txt")], "--key: a watermark key is"),
                        (["--key", KEY, str(tmp_path / "marked.txt")], "give the tokenizer")]:
        failed = _detect_cli(*args)
        assert failed.exit_code == 2 and failed.exception is None or isinstance(failed.exception, SystemExit)
        lines = [line for line in failed.stderr.splitlines() if line.startswith("genloom: error:")]
        assert len(lines) == 1 and words in lines[0], failed.stderr


def test_the_python_api_marks_completions_and_streams(text_model):
    _, model = text_model
    mark = TextWatermark(KEY, "gumbel")
    (completion,) = model.complete("", max_new_tokens=150, seed=1, watermark=mark)
    assert mark.detect(completion.tokens).marked
    streamed = "".join(model.stream("", max_new_tokens=150, seed=1, watermark=mark))
    assert streamed == completion.text
    (plain,) = model.complete("", max_new_tokens=150, seed=1)
    assert not mark.detect(plain.tokens).marked
    assert TextWatermark(KEY).detect(model.complete("", max_new_tokens=150, seed=2, watermark=KEY)[0].tokens).marked


def test_the_server_marks_by_key_or_request_and_detects(text_model):
    httpx = pytest.importorskip("httpx")
    from genloom.serve.limits import Limits

    _, model = text_model
    limits = Limits(max_tokens=200)
    plain_server, keyed_server = _Server({"m": model}, limits), _Server({"m": model}, limits, watermark=KEY)
    try:
        body = {"model": "m", "prompt": "", "max_tokens": 150, "seed": 4, "logprobs": 0}

        def tokens(server, **extra):
            reply = httpx.post(f"{server.url}/v1/completions", json={**body, **extra}, timeout=60)
            assert reply.status_code == 200, reply.text
            assert KEY not in reply.text
            return reply.json()["choices"][0]

        plain = tokens(plain_server)
        by_request = tokens(plain_server, watermark={"key": KEY, "scheme": "gumbel"})
        by_server = tokens(keyed_server)
        assert by_request["text"] != plain["text"] != by_server["text"]

        def detect(server, **fields):
            return httpx.post(f"{server.url}/v1/detect", json={"model": "m", **fields}, timeout=60)

        assert detect(keyed_server, text=by_server["text"]).json()["marked"]
        assert not detect(keyed_server, text=plain["text"]).json()["marked"]
        got = detect(plain_server, text=by_request["text"], key=KEY).json()
        assert got["marked"] and got["scheme"] == "gumbel" and got["object"] == "watermark.detection"
        assert not detect(plain_server, text=by_request["text"], key="another-key-456").json()["marked"]
        clip = AudioWatermark(KEY).mark(_sound(2.0), 16_000)
        sound = detect(keyed_server, file=base64.b64encode(_wav(clip)).decode()).json()
        assert sound["kind"] == "wav" and sound["marked"]
        for server, fields, words in [
                (plain_server, {"text": "x"}, "the server has no watermark key"),
                (plain_server, {"text": "x", "key": "bad"}, "a watermark key is 8 to 256"),
                (keyed_server, {"text": "x", "key": "another-key-456"}, "its own key"),
                (keyed_server, {"file": "not base64!"}, "not base64"),
                (keyed_server, {"file": base64.b64encode(b"\x00\x01garbage").decode()}, "is not text"),
                (keyed_server, {"text": "x", "tokens": [1]}, "give one of")]:
            reply = detect(server, **fields)
            assert reply.status_code == 400 and words in reply.json()["error"]["message"], (fields, reply.text)
            assert KEY not in reply.text and "another-key-456" not in reply.text
        for server, extra, words in [(keyed_server, {"watermark": False}, "marks every text"),
                                     (plain_server, {"watermark": True}, "no watermark key"),
                                     (plain_server, {"watermark": {"key": KEY, "scheme": "gumbel"}, "temperature": 0},
                                      "needs temperature > 0")]:
            reply = httpx.post(f"{server.url}/v1/completions", json={**body, **extra}, timeout=60)
            assert reply.status_code == 400 and words in reply.json()["error"]["message"], reply.text
    finally:
        plain_server.stop()
        keyed_server.stop()
