"""`genloom convert import --hf ORG/NAME[@REVISION]` against a loopback server that answers the Hub's file API
as huggingface_hub calls it (repo info by revision, the tree listing, resolve/{revision}/{file} with ETag,
X-Repo-Commit and Content-Length), serving a tiny model made here: no internet. Refusals: a revision that does
not exist, a repository of pickled weights only (never requested), no network with nothing cached."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from conftest import one_line_error, run_cli
from helpers_hf import hf_model_folder

pytest.importorskip("huggingface_hub")
pytest.importorskip("transformers")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub:
    """{repo: {file: bytes}} on branch main at COMMIT; `requests` records every path asked for."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos, self.requests = repos, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status, body=b"", headers=None, head=False):
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def answer(self, head):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(path)
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    repo, rest = "/".join(parts[2:4]), parts[4:]
                else:
                    repo, rest = "/".join(parts[:2]), parts[2:]
                files = hub.repos.get(repo)
                if files is None:
                    return self.send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head)
                revision = rest[1] if len(rest) > 1 else "main"
                if revision not in ("main", COMMIT):
                    return self.send(404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"}, head)
                if parts[0] == "api" and rest[0] == "revision":
                    body = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                            "siblings": [{"rfilename": f} for f in files]}
                    return self.send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
                if parts[0] == "api" and rest[0] == "tree":
                    body = [{"type": "file", "path": f, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                            for f, data in files.items()]
                    return self.send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
                if rest and rest[0] == "resolve":
                    name = "/".join(rest[2:])
                    if name not in files:
                        return self.send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                    data = files[name]
                    return self.send(200, data, {"ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                                                 "X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes"}, head)
                return self.send(404, b"", {}, head)

            def do_GET(self):
                self.answer(False)

            def do_HEAD(self):
                self.answer(True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    folder = hf_model_folder(tmp_path_factory.mktemp("model"), "qwen2.5", "qwen2")
    model = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    pickled = {"config.json": model["config.json"], "tokenizer.json": model["tokenizer.json"],
               "pytorch_model.bin": b"a pickle genloom must never fetch"}
    server = Hub({"tiny-org/tiny-qwen": model, "tiny-org/pickled": pickled})
    yield server, folder
    server.close()


def hub_env(hub, tmp_path, **extra):
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", **extra}


def test_import_from_the_hub_then_offline_from_its_cache(hub, tmp_path):
    server, folder = hub
    env = hub_env(server, tmp_path)
    result = run_cli("convert", "import", "--hf", "tiny-org/tiny-qwen@main", "--out", str(tmp_path / "a"), env=env)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "a"
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).is_file(), name
    assert (out / "tokenizer_config.json").read_bytes() == (folder / "tokenizer_config.json").read_bytes()
    cached = list((tmp_path / "hf-home").rglob("model.safetensors"))
    assert cached, "the download lands in huggingface_hub's cache"
    assert any(p.startswith("/tiny-org/tiny-qwen/resolve/") for p in server.requests)
    server.requests.clear()
    offline = run_cli("convert", "import", "--hf", "tiny-org/tiny-qwen", "--out", str(tmp_path / "b"),
                      env={**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert not server.requests, "HF_HUB_OFFLINE=1 reads the cache only"
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_refusals_are_one_line_and_write_nothing(hub, tmp_path):
    server, _ = hub
    env = hub_env(server, tmp_path)
    out = tmp_path / "out"
    one_line_error(run_cli("convert", "import", "--hf", "tiny-org/tiny-qwen@no-such-branch", "--out", str(out), env=env),
             "no revision 'no-such-branch'")
    one_line_error(run_cli("convert", "import", "--hf", "tiny-org/pickled", "--out", str(out), env=env),
             "only pickled weights (pytorch_model.bin)", "nothing was unpickled")
    assert not any(p.endswith(".bin") for p in server.requests), "a pickle is never downloaded"
    one_line_error(run_cli("convert", "import", "--hf", "tiny-org/missing", "--out", str(out), env=env),
             "no model repository tiny-org/missing")
    one_line_error(run_cli("convert", "import", "--hf", "tiny-org/tiny-qwen", "--out", str(out),
                     env={**env, "HF_HOME": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}),
             "not in the Hugging Face cache")
    one_line_error(run_cli("convert", "import", "--hf", "tiny-org/tiny-qwen", "--out", str(out),
                     env={**env, "HF_HOME": str(tmp_path / "empty-cache"), "HF_ENDPOINT": "http://127.0.0.1:9"}),
             "not in the Hugging Face cache")
    assert not out.exists()
