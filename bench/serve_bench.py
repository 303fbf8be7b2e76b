"""The server under concurrent load: batching speed-up and time to first token.

    python bench/serve_bench.py [--checkpoint runs/quickstart] [--clients 8] [--requests 32] [--max-tokens 64]

Starts `genloom serve`'s app on a loopback port with the model (by default the quickstart recipe's
architecture, trained for 50 steps: speed does not depend on the weights) and measures, in one run:
- throughput: the same `requests` completions sent one at a time, then from `clients` concurrent
  clients; the ratio is what batching buys;
- time to first streamed token: median and p95 of 20 streamed requests on an idle server;
- a 30-second load run with 32 clients: completed requests, 429s, p50/p95 latency;
- structured outputs (`--schema-checkpoint`, by default the same architecture with a byte-level BPE
  tokenizer, which can write any JSON): chat tokens/s under a 10-field JSON schema against free decoding
  of the same model (one client, greedy), and the time to first streamed token with and without the schema
  (the grammar is compiled for each request).
Results go to bench/out/serve.json and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "serve"))           # test_serve.Server

from text_bench import cpu_name, markdown  # noqa: E402


def quick_checkpoint(checkpoint: Path | None, bpe: bool = False) -> Path:
    """`checkpoint`, or a 50-step quickstart model trained here (with a 2,048-token BPE when `bpe`: JSON and
    tool calls need a vocabulary that can write them) when none is given."""
    if checkpoint is not None:
        return checkpoint
    from genloom import api

    out = Path(tempfile.mkdtemp()) / ("quickstart-bpe" if bpe else "quickstart")
    tokenizer = ["data.tokenizer=bpe", "data.vocab_size=2048"] if bpe else []
    api.train("shakespeare-char", out=out, overrides=[*tokenizer, "train.max_steps=50", "train.progress=false",
                                                      "train.eval_interval=50", "train.eval_batches=1"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a text checkpoint (default: quickstart architecture)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--load-seconds", type=float, default=30)
    parser.add_argument("--schema-checkpoint", type=Path, help="a text checkpoint with a BPE tokenizer for the "
                        "JSON-schema figures (default: trained here)")
    parser.add_argument("--schema-requests", type=int, default=10)
    args = parser.parse_args()

    from test_serve import Server

    from genloom import load
    from genloom.serve.app import Limits

    checkpoint = quick_checkpoint(args.checkpoint)
    server = Server({"m": load(checkpoint)}, Limits(queue_size=64, max_batch=16))
    body = {"model": "m", "max_tokens": args.max_tokens, "temperature": 0.8}
    results: dict = {"machine": cpu_name(), "checkpoint": str(checkpoint), "max_tokens": args.max_tokens}
    try:
        with httpx.Client(timeout=300) as http:
            http.post(f"{server.url}/v1/completions", json={**body, "prompt": "warm up", "seed": 0})
            start = time.perf_counter()
            for i in range(args.requests):
                http.post(f"{server.url}/v1/completions", json={**body, "prompt": f"{i}:", "seed": i}).raise_for_status()
            sequential = time.perf_counter() - start

        def one(i: int) -> None:
            with httpx.Client(timeout=300) as http:
                http.post(f"{server.url}/v1/completions", json={**body, "prompt": f"{i}:", "seed": i}).raise_for_status()

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, range(args.requests)))
        concurrent_time = time.perf_counter() - start
        tokens = args.requests * args.max_tokens
        results["sequential_tokens_per_s"] = tokens / sequential
        results["concurrent_tokens_per_s"] = tokens / concurrent_time
        results["speedup"] = sequential / concurrent_time

        firsts = []
        with httpx.Client(timeout=60) as http:
            for i in range(20):
                start = time.perf_counter()
                with http.stream("POST", f"{server.url}/v1/completions",
                                 json={**body, "prompt": "ROMEO:", "seed": i, "stream": True}) as response:
                    for line in response.iter_lines():
                        if line.startswith("data:") and '"text": ""' not in line:
                            firsts.append(time.perf_counter() - start)
                            break
        results["ttft_median_ms"] = 1000 * statistics.median(firsts)
        results["ttft_p95_ms"] = 1000 * statistics.quantiles(firsts, n=20)[18]

        latencies, statuses, stop_at = [], [], time.time() + args.load_seconds

        def client_loop(i: int) -> None:
            with httpx.Client(timeout=120) as http:
                while time.time() < stop_at:
                    start = time.perf_counter()
                    r = http.post(f"{server.url}/v1/completions", json={**body, "max_tokens": 16, "prompt": f"{i}:",
                                                                        "seed": i})
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - start)
        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results["load"] = {"clients": 32, "seconds": args.load_seconds, "completed": len(latencies),
                           "rejected_429": statuses.count(429), "other_errors": len(statuses) - len(latencies)
                           - statuses.count(429), "p50_s": statistics.median(latencies),
                           "p95_s": statistics.quantiles(latencies, n=20)[18],
                           "requests_per_s": len(latencies) / args.load_seconds}
    finally:
        server.stop()
    results["schema"] = schema_overhead(args)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "serve.json").write_text(json.dumps(results, indent=2))
    rows = [{"requests": "sequential (1 client)", "tokens/s": f"{results['sequential_tokens_per_s']:.0f}",
             "ratio": "1.00x"},
            {"requests": f"{args.clients} concurrent clients", "tokens/s": f"{results['concurrent_tokens_per_s']:.0f}",
             "ratio": f"{results['speedup']:.2f}x"}]
    print(markdown({f"{args.requests} completions of {args.max_tokens} tokens": rows}))
    print(f"\ntime to first streamed token: median {results['ttft_median_ms']:.1f} ms, "
          f"p95 {results['ttft_p95_ms']:.1f} ms")
    print(f"load: {json.dumps(results['load'])}")
    sch = results["schema"]
    print(f"\n10-field JSON schema (chat, greedy, one client): {sch['schema_tokens_per_s']:.0f} tokens/s against "
          f"{sch['free_tokens_per_s']:.0f} free ({100 * (1 - sch['schema_tokens_per_s'] / sch['free_tokens_per_s']):.1f}% "
          f"slower per token); time to first token {sch['schema_ttft_ms']:.1f} ms against {sch['free_ttft_ms']:.1f} ms "
          f"(+{sch['schema_ttft_ms'] - sch['free_ttft_ms']:.1f} ms)")


SCHEMA_10 = {"type": "object", "additionalProperties": False, "properties": {
    "name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "colour": {"enum": ["red", "green", "blue"]}, "tags": {"type": "array", "items": {"type": "string",
                                                                                      "maxLength": 8}, "maxItems": 3},
    "home": {"type": "object", "properties": {"town": {"type": "string", "maxLength": 12},
                                              "north": {"type": "boolean"}}, "required": ["town", "north"],
             "additionalProperties": False},
    "alive": {"type": "boolean"}, "rank": {"type": "integer"}, "motto": {"type": "string", "maxLength": 24},
    "score": {"type": "number"}, "title": {"enum": ["thane", "king", "lord", "none"]}}}
SCHEMA_10["required"] = list(SCHEMA_10["properties"])


def schema_overhead(args) -> dict:
    """Chat tokens/s and time to first token with SCHEMA_10 against free decoding, on a BPE model."""
    from test_serve import Server

    from genloom import load
    from genloom.serve.app import Limits

    checkpoint = quick_checkpoint(args.schema_checkpoint, bpe=True)
    server = Server({"m": load(checkpoint)}, Limits(queue_size=64, max_batch=16))
    chat = {"model": "m", "messages": [{"role": "user", "content": "Describe a character."}], "temperature": 0}
    fmt = {"type": "json_schema", "json_schema": {"name": "character", "schema": SCHEMA_10, "strict": True}}
    out: dict = {"checkpoint": str(checkpoint)}
    try:
        with httpx.Client(timeout=300) as http:
            url = f"{server.url}/v1/chat/completions"
            http.post(url, json={**chat, "max_tokens": 8}).raise_for_status()
            http.post(url, json={**chat, "max_tokens": 8, "response_format": fmt}).raise_for_status()
            for name, extra in (("free", {}), ("schema", {"response_format": fmt})):
                tokens, start = 0, time.perf_counter()
                for i in range(args.schema_requests):
                    r = http.post(url, json={**chat, **extra, "max_tokens": 200, "seed": i,
                                             "messages": [{"role": "user", "content": f"Character {i}."}]})
                    r.raise_for_status()
                    tokens += r.json()["usage"]["completion_tokens"]
                out[f"{name}_tokens_per_s"] = tokens / (time.perf_counter() - start)
                out[f"{name}_tokens"] = tokens
                firsts = []
                for i in range(10):
                    start = time.perf_counter()
                    with http.stream("POST", url, json={**chat, **extra, "max_tokens": 4, "stream": True,
                                                        "messages": [{"role": "user", "content": f"T{i}"}]}) as r:
                        for line in r.iter_lines():
                            if line.startswith("data:") and '"content"' in line and '"content": ""' not in line:
                                firsts.append(time.perf_counter() - start)
                                break
                out[f"{name}_ttft_ms"] = 1000 * statistics.median(firsts)
    finally:
        server.stop()
    return out


if __name__ == "__main__":
    main()
