"""What tool calling costs through the server: the grammar of the calls against free decoding of the same prompt.

    flock /tmp/genloom-heavy.lock nice -n 19 python bench/tools_bench.py [--checkpoint DIR] [--requests 10]

On the quickstart recipe's architecture with a 2,048-token byte-level BPE tokenizer (trained here for 50
steps: speed does not depend on the weights), one client, greedy, the same chat request with two tools
(bench's 10-field schema and a small one) and `tool_choice: "required"` (the calls' Lark grammar, each
function's schema inside `%json`) against `tool_choice: "none"` (the same prompt, tools listed, no grammar;
newline tokens banned so that the free replies, like the calls, run to about max_tokens): completion tokens/s,
and the time to the first streamed token (the grammar is compiled for each request).
Results go to bench/out/tools.json and are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "serve"))           # test_serve.Server

from serve_bench import SCHEMA_10, quick_checkpoint  # noqa: E402
from text_bench import cpu_name  # noqa: E402

TOOLS = [{"type": "function", "function": {"name": "describe", "description": "Describe a character.",
                                           "parameters": SCHEMA_10}},
         {"type": "function", "function": {"name": "add", "description": "Add two whole numbers.", "parameters": {
             "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
             "required": ["a", "b"], "additionalProperties": False}}}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a text checkpoint with a BPE tokenizer (default: "
                        "the quickstart architecture with a 2,048-token BPE, trained here)")
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args()

    from test_serve import Server

    from genloom import load
    from genloom.serve.app import Limits

    checkpoint = quick_checkpoint(args.checkpoint, bpe=True)
    handle = load(checkpoint)
    server = Server({"m": handle}, Limits(queue_size=64, max_batch=16))
    chat = {"model": "m", "tools": TOOLS, "temperature": 0, "parallel_tool_calls": False}
    # Free replies would end at the plain template's blank line after a few tokens; banning the newline tokens
    # lets them run to max_tokens like the calls, so both paths are timed over as many tokens.
    newlines = {str(t): -100 for t in {*handle.tokenizer.encode("\n"), *handle.tokenizer.encode("\n\n")}}
    extra = {"none": {"logit_bias": newlines}, "required": {}}
    out: dict = {"machine": cpu_name(), "checkpoint": str(checkpoint), "requests": args.requests}
    try:
        with httpx.Client(timeout=300) as http:
            url = f"{server.url}/v1/chat/completions"
            for choice in ("none", "required"):                                  # warm up both paths
                http.post(url, json={**chat, "tool_choice": choice, "max_tokens": 8,
                                     "messages": [{"role": "user", "content": "hi"}]}).raise_for_status()
            for choice in ("none", "required"):
                tokens, calls, start = 0, 0, time.perf_counter()
                for i in range(args.requests):
                    r = http.post(url, json={**chat, **extra[choice], "tool_choice": choice, "max_tokens": 200,
                                             "seed": i,
                                             "messages": [{"role": "user", "content": f"Character {i}."}]})
                    r.raise_for_status()
                    tokens += r.json()["usage"]["completion_tokens"]
                    calls += len(r.json()["choices"][0]["message"].get("tool_calls") or [])
                out[f"{choice}_tokens_per_s"] = tokens / (time.perf_counter() - start)
                out[f"{choice}_tokens"], out[f"{choice}_calls"] = tokens, calls
                firsts = []
                for i in range(10):
                    start = time.perf_counter()
                    # logprobs: every sampled token gets a chunk, also while a call's name is still being
                    # written (no delta yet), so this is the time to the first token on both paths
                    with http.stream("POST", url, json={**chat, "tool_choice": choice, "max_tokens": 4,
                                                        "stream": True, "logprobs": True,
                                                        "messages": [{"role": "user", "content": f"T{i}"}]}) as r:
                        for line in r.iter_lines():
                            if line.startswith("data:") and '"logprobs": {"content"' in line:
                                firsts.append(time.perf_counter() - start)
                                break
                out[f"{choice}_ttft_ms"] = 1000 * statistics.median(firsts)
    finally:
        server.stop()
    folder = ROOT / "bench" / "out"
    folder.mkdir(exist_ok=True)
    (folder / "tools.json").write_text(json.dumps(out, indent=2))
    print(f"two tools (a 10-field schema and a 2-field one), chat, greedy, one client, {args.requests} requests:\n"
          f"tool_choice required: {out['required_tokens_per_s']:.0f} tokens/s ({out['required_calls']} calls), "
          f"none (same prompt, no grammar): {out['none_tokens_per_s']:.0f} tokens/s "
          f"(ratio {out['required_tokens_per_s'] / out['none_tokens_per_s']:.2f}); first streamed token "
          f"{out['required_ttft_ms']:.1f} ms against {out['none_ttft_ms']:.1f} ms "
          f"(+{out['required_ttft_ms'] - out['none_ttft_ms']:.1f} ms)")


if __name__ == "__main__":
    main()
