"""Per-token cost of three CPU grammar engines for JSON-schema constrained decoding, on one tokenizer.

    python bench/grammar_bench.py [--vocab 8192] [--fields 10] [--repeats 5]

Each engine (xgrammar 0.2.8, llguidance 1.9.1, outlines-core 0.2.14) is given the same JSON schema (an
object of `--fields` fields: strings, integers, enums, an array and a nested object) and the same byte-level
BPE tokenizer (trained here on a Shakespeare play with the `tokenizers` library, `--vocab` tokens; nothing is
downloaded). Measured, per engine: the one-off compile time of the schema against the vocabulary, and the
time per decoding step to compute the allowed-token mask and advance by one token, walking the tokens of a
valid document (the same token path for every engine, so the steps are the same work). Results go to
bench/out/grammar.json and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def schema(fields: int) -> dict:
    kinds = [{"type": "string", "maxLength": 24}, {"type": "integer"}, {"enum": ["red", "green", "blue"]},
             {"type": "array", "items": {"type": "integer"}, "maxItems": 4},
             {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "string", "maxLength": 8}},
              "required": ["x", "y"], "additionalProperties": False},
             {"type": "boolean"}]
    props = {f"field_{i}": kinds[i % len(kinds)] for i in range(fields)}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def document(fields: int) -> str:
    values = ["Macbeth of Glamis", 1606, "green", [1, 2, 3], {"x": 4, "y": "dagger"}, True]
    return json.dumps({f"field_{i}": values[i % len(values)] for i in range(fields)})


def tokenizer(vocab: int, folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from genloom.core.sources import markdown_play_to_text, shakespeare_plays

    text = markdown_play_to_text(dict(shakespeare_plays())["macbeth"].read_text(encoding="utf-8"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text, document(20)], trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(folder / "tokenizer.json"))
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token="<|endoftext|>")


def run_xgrammar(hf, schema_text: str, path: list[int]):
    import torch
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=len(hf))
    start = time.perf_counter()
    compiled = xgr.GrammarCompiler(info, max_threads=1).compile_json_schema(schema_text, strict_mode=True)
    compile_s = time.perf_counter() - start
    matcher = xgr.GrammarMatcher(compiled)
    mask = xgr.allocate_token_bitmask(1, len(hf))
    steps = []
    for token in path:
        start = time.perf_counter()
        matcher.fill_next_token_bitmask(mask)
        allowed = bool((mask[0, token // 32] >> (token % 32)) & 1)
        assert allowed and matcher.accept_token(token)
        steps.append(time.perf_counter() - start)
    del torch
    return compile_s, steps


def run_llguidance(hf, schema_text: str, path: list[int]):
    import llguidance
    import llguidance.hf
    import llguidance.torch as lt

    tok = llguidance.hf.from_tokenizer(hf)
    start = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_text)
    matcher = llguidance.LLMatcher(tok, grammar)
    assert not matcher.is_error(), matcher.get_error()
    compile_s = time.perf_counter() - start
    mask = lt.allocate_token_bitmask(1, tok.vocab_size)
    steps = []
    for token in path:
        start = time.perf_counter()
        lt.fill_next_token_bitmask(matcher, mask, 0)
        allowed = bool((int(mask[0, token // 32]) >> (token % 32)) & 1)
        assert allowed and matcher.consume_token(token), matcher.get_error()
        steps.append(time.perf_counter() - start)
    return compile_s, steps


def run_outlines(hf, schema_text: str, path: list[int]):
    import torch
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    eos = hf.eos_token_id
    pieces: dict[str, list[int]] = {}
    for token in range(len(hf)):                 # outlines-core takes each token's text, not its byte-level form
        if token != eos:
            pieces.setdefault(hf.decode([token]), []).append(token)
    vocabulary = Vocabulary(eos, pieces)
    start = time.perf_counter()
    index = Index(build_regex_from_schema(schema_text), vocabulary)
    compile_s = time.perf_counter() - start
    guide = Guide(index)
    mask = torch.zeros((len(hf) + 31) // 32, dtype=torch.int32)
    steps = []
    for token in path:
        start = time.perf_counter()
        guide.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())
        allowed = bool((int(mask[token // 32]) >> (token % 32)) & 1)
        assert allowed, f"outlines-core refused token {token} ({hf.decode([token])!r})"
        guide.advance(token)
        steps.append(time.perf_counter() - start)
    return compile_s, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--fields", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    folder = Path(tempfile.mkdtemp())
    hf = tokenizer(args.vocab, folder)
    schema_text = json.dumps(schema(args.fields))
    path = hf(document(args.fields), add_special_tokens=False)["input_ids"]
    results = {"vocab": len(hf), "fields": args.fields, "document_tokens": len(path), "engines": {}}
    for name, run in (("xgrammar 0.2.8", run_xgrammar), ("llguidance 1.9.1", run_llguidance),
                      ("outlines-core 0.2.14", run_outlines)):
        compiles, per_token = [], []
        try:
            for _ in range(args.repeats):
                compile_s, steps = run(hf, schema_text, path)
                compiles.append(compile_s)
                per_token.append(statistics.mean(steps))
        except Exception as error:   # an engine that cannot run the schema is reported, not hidden
            results["engines"][name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        results["engines"][name] = {"compile_ms": 1e3 * statistics.median(compiles),
                                    "per_token_us": 1e6 * statistics.median(per_token)}
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "grammar.json").write_text(json.dumps(results, indent=2))
    print(f"| engine | compile ({args.fields}-field schema, {len(hf)} tokens) | mask + advance per token |")
    print("|---|---|---|")
    for name, r in results["engines"].items():
        if "error" in r:
            print(f"| {name} | failed: {r['error']} | |")
        else:
            print(f"| {name} | {r['compile_ms']:.1f} ms | {r['per_token_us']:.0f} us |")


if __name__ == "__main__":
    main()
