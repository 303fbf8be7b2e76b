"""`genloom serve` against a real server on a loopback port: the official openai client, streaming,
images, auth, bad input, queue limits, disconnects, batching, a load run, schema fuzzing and the web page."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import socket
import statistics
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import tiny

from genloom import api, load

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from genloom.serve.app import Limits, create_app

ARTIFACTS = Path(os.environ.get("GENLOOM_TEST_ARTIFACTS", "test-artifacts"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a background thread, serving `create_app(models, limits, api_key, allowed_hosts)`."""

    def __init__(self, models: dict, limits: Limits = Limits(), api_key: str | None = None, allowed_hosts=None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(models, limits, api_key, allowed_hosts), host="127.0.0.1", port=self.port,
                                log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code < 500:     # 403 for a host list
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("serve")
    api.train("shakespeare-char", out=root / "text", overrides=tiny(corpus, "train.max_steps=20"))
    api.train("glyphs-text-to-image-unet", out=root / "t2i", overrides=[
        "data.scenes_count=200", "data.caption_variants=1", "model.base_channels=16", "model.channel_mults=1,2",
        "model.attention_resolutions=8", "model.text_dim=32", "model.text_layers=1", "model.text_heads=2",
        "train.batch_size=8", "train.max_steps=3", "train.eval_interval=3", "train.eval_batches=1",
        "train.progress=false", "train.compile=false", "train.precision=fp32", "objective.sample_steps=2"])
    return root


@pytest.fixture(scope="module")
def models(checkpoints):
    return {"shakes": load(checkpoints / "text"), "scenes": load(checkpoints / "t2i")}


@pytest.fixture(scope="module")
def server(models):
    s = Server(models, Limits(max_body_bytes=200_000, max_prompt_tokens=2000, queue_size=64))
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_openai_client_models_completion_chat_and_images(client):
    ids = {m.id for m in client.models.list().data}
    assert ids == {"shakes", "scenes"}
    done = client.completions.create(model="shakes", prompt="ROMEO:", max_tokens=12, seed=3, temperature=0.8)
    assert done.object == "text_completion" and len(done.choices) == 1
    assert done.usage.completion_tokens == 12 and done.usage.prompt_tokens == len("ROMEO:")
    again = client.completions.create(model="shakes", prompt="ROMEO:", max_tokens=12, seed=3, temperature=0.8)
    assert again.choices[0].text == done.choices[0].text                           # a seed reproduces it
    cut = client.completions.create(model="shakes", prompt="ROMEO:", max_tokens=30, seed=3, stop=["\n"])
    assert "\n" not in cut.choices[0].text
    chat = client.chat.completions.create(model="shakes", messages=[{"role": "user", "content": "Speak."}],
                                          max_tokens=8, seed=1, n=2)
    assert chat.object == "chat.completion" and len(chat.choices) == 2
    assert chat.choices[0].message.role == "assistant"
    image = client.images.generate(model="scenes", prompt="a red letter A on the left on a white background", n=2,
                                   response_format="b64_json", extra_body={"steps": 2, "seed": 5})
    assert len(image.data) == 2 and image.data[0].b64_json


def test_streaming_chunks_share_an_id_start_with_the_role_and_end_with_usage(client):
    chunks = list(client.chat.completions.create(model="shakes", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=10, seed=2, stream=True,
                                                 stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = client.chat.completions.create(model="shakes", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=10, seed=2)
    assert text.strip() == plain.choices[0].message.content
    pieces = list(client.completions.create(model="shakes", prompt="KING:", max_tokens=6, seed=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces if p.choices) == client.completions.create(
        model="shakes", prompt="KING:", max_tokens=6, seed=0).choices[0].text


def test_concurrent_requests_are_batched_and_give_the_same_text_as_alone(server, client):
    prompts = [f"LINE {i}:" for i in range(8)]
    alone = [client.completions.create(model="shakes", prompt=p, max_tokens=20, seed=i).choices[0].text
             for i, p in enumerate(prompts)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda i: client.completions.create(model="shakes", prompt=prompts[i], max_tokens=20,
                                                                     seed=i).choices[0].text, range(8)))
    assert together == alone


def test_auth_failure_is_a_401_authentication_error(models):
    s = Server(models, api_key="sesame")
    try:
        bad = openai.OpenAI(base_url=f"{s.url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.models.list()
        assert caught.value.status_code == 401 and caught.value.body["type"] == "authentication_error"
        good = openai.OpenAI(base_url=f"{s.url}/v1", api_key="sesame", max_retries=0)
        assert [m.id for m in good.models.list().data]
        assert httpx.get(f"{s.url}/health").status_code == 200          # health and the page stay open
    finally:
        s.stop()


@pytest.mark.parametrize("body, status, words", [
    ("{not json", 400, "not valid JSON"),
    ({"model": "shakes", "prompt": "x", "max_tokens": "many"}, 422, "max_tokens"),
    ({"model": "nobody", "prompt": "x"}, 404, "does not exist"),
    ({"model": "shakes", "prompt": "x", "max_tokens": -3}, 422, "max_tokens"),
    ('{"model": "shakes", "prompt": "x", "temperature": NaN}', 422, "temperature"),
    ({"model": "shakes", "prompt": "x", "n": 1000}, 400, "n=1000"),
    ({"model": "shakes", "prompt": "x", "max_tokens": 10**6}, 400, "max_tokens"),
    ({"model": "shakes", "prompt": "x" * 250_000}, 413, "larger than"),
    ({"model": "shakes", "prompt": "x" * 5_000}, 400, "tokens"),
    ({"model": "scenes", "prompt": "x"}, 400, "is a text-to-image model"),
])
def test_bad_completion_requests_get_clear_4xx(server, body, status, words):
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(f"{server.url}/v1/completions", content=content,
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert httpx.get(f"{server.url}/health").status_code == 200                       # still serving


@pytest.mark.parametrize("body, words", [
    ({"model": "scenes", "prompt": "  "}, "prompt is empty"),
    ({"model": "scenes", "prompt": "a red A", "size": "1024x1024"}, "32x32"),
    ({"model": "scenes", "prompt": "a red A", "steps": 100000}, "steps"),
    ({"model": "scenes", "prompt": "a red A", "response_format": "url"}, "b64_json"),
    ({"model": "shakes", "prompt": "a red A"}, "is a text model"),
])
def test_bad_image_requests_get_clear_4xx(server, body, words):
    response = httpx.post(f"{server.url}/v1/images/generations", json=body, timeout=30)
    assert 400 <= response.status_code < 500 and words in response.json()["error"]["message"], response.text


def test_a_full_queue_answers_429_and_a_client_that_leaves_frees_its_slot(models):
    s = Server(models, Limits(queue_size=1, max_batch=1))
    try:
        slow = {"model": "shakes", "prompt": "A", "max_tokens": 2000, "stream": True}
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", f"{s.url}/v1/completions", json=slow) as first:
                lines = first.iter_lines()        # kept: a dropped iterator closes the connection
                next(lines)                                                   # running
                with http.stream("POST", f"{s.url}/v1/completions", json=slow) as second:
                    assert second.status_code == 200                          # waiting in the queue
                    third = http.post(f"{s.url}/v1/completions", json={**slow, "stream": False})
                    assert third.status_code == 429 and third.json()["error"]["type"] == "rate_limit_exceeded"
            deadline = time.time() + 10                                        # both clients left
            while time.time() < deadline and http.get(f"{s.url}/health").json()["models"]["shakes"]["queue"]:
                time.sleep(0.1)
            assert http.get(f"{s.url}/health").json()["models"]["shakes"]["queue"] == 0
            ok = http.post(f"{s.url}/v1/completions", json={"model": "shakes", "prompt": "A", "max_tokens": 3})
            assert ok.status_code == 200
    finally:
        s.stop()


def test_metrics_and_image_progress_stream(server):
    with httpx.stream("POST", f"{server.url}/v1/images/generations", timeout=60,
                      json={"model": "scenes", "prompt": "a blue circle", "steps": 3, "seed": 1, "stream": True}) as r:
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:") and "DONE" not in line]
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    assert events[-1]["type"] == "result" and events[-1]["genloom"]["seed"] == 1
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("genloom_requests_total", "genloom_request_seconds_bucket", "genloom_tokens_generated_total",
                 "genloom_images_generated_total", "genloom_queue_depth", "genloom_time_to_first_token_seconds"):
        assert name in text


def test_load_32_clients_for_30_seconds(models):
    s = Server(models, Limits(queue_size=24))
    latencies, statuses, stop_at = [], [], time.time() + 30
    rss = []

    def client_loop(i: int) -> None:
        with httpx.Client(timeout=60) as http:
            while time.time() < stop_at:
                start = time.perf_counter()
                r = http.post(f"{s.url}/v1/completions", json={"model": "shakes", "prompt": f"{i}:", "max_tokens": 16,
                                                               "seed": i})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    time.sleep(0.05)

    def memory() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    try:
        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            rss.append(memory())
            time.sleep(1)
        for t in threads:
            t.join()
    finally:
        s.stop()
    assert set(statuses) <= {200, 429} and latencies
    quantiles = statistics.quantiles(latencies, n=20)
    report = {"requests": len(latencies), "rejected_429": statuses.count(429),
              "throughput_rps": len(latencies) / 30, "p50_s": statistics.median(latencies), "p95_s": quantiles[18],
              "rss_mb_first_last": [rss[2] / 2**20, rss[-1] / 2**20]}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "serve-load.json").write_text(json.dumps(report, indent=2))
    print(report)
    assert rss[-1] < rss[2] * 1.5                                            # memory stable


def test_schema_fuzzing_finds_no_server_errors(models):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    app = create_app(models, Limits(max_tokens=8, max_steps=2, max_n=2, max_images=2, max_batch=4),
                     allowed_hosts=["testserver"])                      # schemathesis's ASGI host name
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/images/generations"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call()
            assert response.status_code < 500, (case.path, case.body, response.text)

        check()


def test_web_page_streams_text_and_shows_images(server):
    webdriver = pytest.importorskip("selenium.webdriver")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not browser or not driver_path:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=390,1200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) == 2)
        Select(driver.find_element(By.ID, "model")).select_by_value("shakes")
        driver.find_element(By.ID, "prompt").send_keys("ROMEO:")
        driver.find_element(By.ID, "max_tokens").clear()
        driver.find_element(By.ID, "max_tokens").send_keys("40")
        driver.find_element(By.ID, "generate-text").click()
        wait.until(lambda d: "reproduce with" in d.find_element(By.ID, "text-params").text)
        assert len(driver.find_element(By.ID, "output").text) > len("ROMEO:")
        Select(driver.find_element(By.ID, "model")).select_by_value("scenes")
        driver.find_element(By.ID, "image_prompt").send_keys("a red letter A on the left on a white background")
        driver.find_element(By.ID, "steps").clear()
        driver.find_element(By.ID, "steps").send_keys("3")
        driver.find_element(By.ID, "generate-image").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery .card img"))
        assert driver.find_element(By.ID, "error").text == ""
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "serve-page.png"))
    finally:
        driver.quit()



# ----------------------------------------------------------------------------------------------
# Hardening (issue 29): what a hostile client or a hostile checkpoint must not be able to do
# ----------------------------------------------------------------------------------------------

SAMPLE_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? '
                         r'[-+0-9.eEInfa]+$')


def _well_formed(metrics: str) -> None:
    for line in metrics.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or SAMPLE_LINE.match(line), line


def test_metrics_labels_are_route_templates_escaped_and_do_not_grow_per_unknown_path(server):
    injection = '/v1/x"} 1e9\ngenloom_injected_total{path="pwn"} 42\n#'
    with httpx.Client(timeout=10) as http:
        assert http.get(server.url + quote(injection)).status_code == 404
        assert http.get(f"{server.url}/v1/models/shakes").status_code == 200
        http.get(f"{server.url}/metrics")
        before = http.get(f"{server.url}/metrics").text
        for i in range(300):
            http.get(f"{server.url}/v1/unknown-{i}")
        after = http.get(f"{server.url}/metrics").text
    for text in (before, after):
        _well_formed(text)
        assert "genloom_injected" not in text and "pwn" not in text and "unknown-" not in text
    assert 'path="/v1/models/{name}",status="200"' in after and 'path="unmatched",status="404"' in after
    assert len(after.splitlines()) == len(before.splitlines())               # counts grew, series did not


def _slow_checkpoint(checkpoints, tmp_path, end: str) -> Path:
    folder = tmp_path / f"end-{len(end)}"
    shutil.copytree(checkpoints / "text", folder)
    (folder / "chat_template.json").write_text(json.dumps({"format": "genloom-chat-1", "system": "System: ",
                                                           "user": "User: ", "assistant": "Assistant: ",
                                                           "end": end}))
    return folder


@pytest.mark.parametrize("end", [" ", ""])
def test_a_chat_template_that_froze_the_server_is_refused_at_load_and_cannot_freeze_it(checkpoints, tmp_path, end):
    from genloom.core.errors import CheckpointError
    from genloom.text.chat import ChatTemplate

    folder = _slow_checkpoint(checkpoints, tmp_path, end)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="not a usable chat template: end is"):
        load(folder)
    assert time.perf_counter() - start < 10
    # Served anyway (the template forced onto a handle): replies come back and /health stays fast.
    handle = load(checkpoints / "text")
    handle.chat_template = ChatTemplate(end=end)
    s = Server({"odd": handle}, Limits(timeout=20))
    try:
        with httpx.Client(timeout=30) as http:
            body = {"model": "odd", "messages": [{"role": "user", "content": "a b  c\n\nd " * 100}], "max_tokens": 4}
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                reply = pool.submit(http.post, f"{s.url}/v1/chat/completions", json=body)
                health = [_timed_health(s.url) for _ in range(5)]
                assert reply.result().status_code == 200, reply.result().text
            assert max(health) < 1.0, health
    finally:
        s.stop()


def test_chat_template_clean_ends_for_any_end_marker_and_keeps_the_default_behaviour():
    from genloom.text.chat import ChatTemplate

    def old_clean(end: str, content: str) -> str:               # the loop that froze on "" and " "
        while end in content:
            content = content.replace(end, end[:-1] or " ")
        return content.strip()

    samples = ["a\n\n\n\nb\n\nc\n", "x\ny", "<|end|>> <|end|", "aab ab abab", "\\\\\\"]
    for end in ["\n\n", "\n", "<|end|>", "ab", "\\\\"]:
        for content in samples:
            assert ChatTemplate(end=end).clean(content) == old_clean(end, content), (end, content)
    hostile = "a b  c\n\n\nd <|end|>>ab" * 40_000                   # about 1 MB
    for end in ["", " ", "\t", "\n", "\n\n", "ab", "<|end|>", "aaa", "\\"]:
        start = time.perf_counter()
        cleaned = ChatTemplate(end=end).clean(hostile)
        assert time.perf_counter() - start < 2.0 and (not end or end not in cleaned), end


def _timed_health(url: str) -> float:
    start = time.perf_counter()
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    return time.perf_counter() - start


def test_an_endless_chat_template_times_out_while_health_stays_fast_and_frees_its_thread(models, checkpoints):
    stuck = load(checkpoints / "text")

    def endless(messages, tools=None):                  # what ChatTemplate.clean did with "end": " "
        content = messages[-1]["content"]
        while " " in content:
            content = content.replace(" ", " ")
        return content

    stuck.chat_prompt = endless
    s = Server({"stuck": stuck, "shakes": models["shakes"]}, Limits(timeout=2))
    try:
        with httpx.Client(timeout=30) as http:
            body = {"model": "stuck", "messages": [{"role": "user", "content": "a b"}], "max_tokens": 4}
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(6) as pool:      # more than the preparation threads
                replies = [pool.submit(http.post, f"{s.url}/v1/chat/completions", json=body) for _ in range(6)]
                health = [_timed_health(s.url) for _ in range(10)]
                statuses = [r.result().status_code for r in replies]
            assert statuses == [503] * 6 and time.perf_counter() - start < 8
            assert max(health) < 1.0, health
            assert replies[0].result().json()["error"]["code"] == "timeout"
            ok = http.post(f"{s.url}/v1/chat/completions",
                           json={"model": "shakes", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
            assert ok.status_code == 200, ok.text                        # the threads were freed
    finally:
        s.stop()


def test_a_client_that_leaves_a_non_streaming_request_frees_the_worker_within_a_second(models):
    s = Server({"shakes": models["shakes"]}, Limits(max_tokens=1_000_000))
    try:
        body = {"model": "shakes", "prompt": "A", "max_tokens": 1_000_000}
        left = []

        def leave_early() -> None:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{s.url}/v1/completions", json=body, timeout=1.5)
            left.append(time.perf_counter())

        client = threading.Thread(target=leave_early)
        client.start()
        time.sleep(0.75)
        assert httpx.get(f"{s.url}/health").json()["models"]["shakes"]["queue"] == 1     # decoding
        client.join()
        while httpx.get(f"{s.url}/health").json()["models"]["shakes"]["queue"] and time.perf_counter() < left[0] + 5:
            time.sleep(0.02)
        assert time.perf_counter() - left[0] < 1.0
        assert httpx.get(f"{s.url}/health").json()["models"]["shakes"]["queue"] == 0
    finally:
        s.stop()


def test_long_stop_strings_are_refused_or_matched_without_slowing_other_requests(server, models):
    too_long = {"model": "shakes", "prompt": "x", "max_tokens": 4, "stop": ["a" * 1001]}
    response = httpx.post(f"{server.url}/v1/completions", json=too_long, timeout=30)
    assert response.status_code == 400 and "stop[0] has 1001 characters" in response.json()["error"]["message"]

    s = Server({"shakes": models["shakes"]}, Limits(max_stop_length=60_000))
    try:
        def ask(body) -> float:
            start = time.perf_counter()
            r = httpx.post(f"{s.url}/v1/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            return time.perf_counter() - start

        short = {"model": "shakes", "prompt": "KING:", "max_tokens": 8, "seed": 1}
        alone = min(ask(short) for _ in range(3))
        stops = ["e" * 59_999 + end for end in "xyzq"]                      # almost matched all the time
        long = {"model": "shakes", "prompt": "eeee", "max_tokens": 8, "seed": 1, "stop": stops}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow = pool.submit(ask, long)
            beside = [ask(short) for _ in range(3)]
            assert slow.result() < 3.0
        assert min(beside) < max(10 * alone, 0.5), (alone, beside)
    finally:
        s.stop()


def test_a_keyless_server_refuses_foreign_hosts_and_origins(server, models):
    url = f"{server.url}/v1/models"
    rebound = httpx.get(url, headers={"Host": f"attacker.example:{server.port}"})
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_not_allowed"
    assert httpx.get(f"{server.url}/health", headers={"Host": "attacker.example"}).status_code == 403
    posted = httpx.post(f"{server.url}/v1/completions", json={"model": "shakes", "prompt": "x", "max_tokens": 1},
                        headers={"Origin": "http://attacker.example"})
    assert posted.status_code == 403 and "Origin" in posted.json()["error"]["message"]
    assert httpx.get(url, headers={"Origin": "null"}).status_code == 403
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", f"[::1]:{server.port}"):
        assert httpx.get(url, headers={"Host": host, "Origin": f"http://{host}"}).status_code == 200
    keyed = Server(models, api_key="sesame")                             # with a key, the key is the check
    try:
        assert httpx.get(f"{keyed.url}/v1/models", headers={"Host": "anything.example",
                                                             "Authorization": "Bearer sesame"}).status_code == 200
    finally:
        keyed.stop()
    listed = Server(models, allowed_hosts=["genloom.lan"])
    try:
        assert httpx.get(f"{listed.url}/v1/models", headers={"Host": "genloom.lan:8000"}).status_code == 200
        assert httpx.get(f"{listed.url}/v1/models", headers={"Host": "localhost"}).status_code == 403
    finally:
        listed.stop()


def test_a_chunked_body_over_the_limit_gets_413(server):
    def chunks(total: int, piece: bytes = b" " * 10_000):
        yield b'{"model": "shakes", "prompt": "x", "max_tokens": 2'
        for _ in range(total // len(piece)):
            yield piece
        yield b"}"

    big = httpx.post(f"{server.url}/v1/completions", content=chunks(250_000), timeout=30,
                     headers={"content-type": "application/json"})
    assert big.status_code == 413 and "larger than" in big.json()["error"]["message"], big.text
    small = httpx.post(f"{server.url}/v1/completions", content=chunks(20_000), timeout=30,
                       headers={"content-type": "application/json"})
    assert small.status_code == 200, small.text
