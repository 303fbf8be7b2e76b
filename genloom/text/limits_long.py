"""The limits of long outputs and long inputs (`genloom eval --task consistency|context`, see `limits.py`):
facts a long generation contradicts, repetition and diversity under several decodings compared at equal
perplexity; perplexity by position and passkey retrieval past the training context, with rotary scaling.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import torch

from ..core.errors import DataError, GenloomError
from ..lm.decoding import Sampling, contrastive_search, encode_prompt, generate_tokens
from .biographies import generate
from .limit_measures import distinct_n, passkey_prompt, passkey_text, repeated_ngram_share
from .limit_result import LimitsResult, biographies_of, pct, sample_of

__all__ = ["consistency", "context", "stated_facts", "temperature_search", "at_perplexity", "DECODINGS", "SCALINGS"]

# ----------------------------------------------------------------------------------------------
# consistency
# ----------------------------------------------------------------------------------------------

FACT_PATTERNS = {
    "birth_city": re.compile(r"\bborn (?:in|on [^.,;]*? in) ([A-Z][a-z]+)"),
    "university": re.compile(r"\b(?:graduate of|studied at|attended|graduate from) ((?:the )?[A-Z][\w ]*?)(?:[.,;]|$)"),
    "field": re.compile(r"\b(?:works in|career in|life's work is|chose) ([a-z]+)"),
    "employer": re.compile(r"\b(?:employed by|works for|job at|payroll of) ([A-Z][\w&]*(?: [A-Z&][\w]*)*)"),
}


def stated_facts(text: str, first: str) -> dict[str, set[str]]:
    """What a text says about the person whose first name is `first`: each attribute's values, from the
    sentences that name them (the biography templates' phrasings)."""
    facts: dict[str, set[str]] = {}
    for sentence in re.split(r"(?<=[.;])\s+|\n+", text):
        if first not in sentence:
            continue
        for attribute, pattern in FACT_PATTERNS.items():
            for value in pattern.findall(sentence):
                facts.setdefault(attribute, set()).add(value.strip())
    return facts


DECODINGS = {
    "greedy": dict(temperature=0.0),
    "sampling": dict(temperature=1.0),
    "repetition_penalty": dict(temperature=1.0, repetition_penalty=1.3),
    "no_repeat_ngram": dict(temperature=1.0, no_repeat_ngram=4),
    "contrastive": dict(contrastive=(4, 0.6)),
}


def consistency(handle, *, data: str | None = None, num_samples: int = 4, length: int = 1024, seed: int = 0,
                progress: bool = True) -> LimitsResult:
    """Long generations (`length` tokens) from biography openings (or --data prompts, one a line) under several
    decodings: facts contradicted later in the same text, repeated 4-grams, distinct-n, and the perplexity the
    model gives its own text (to compare decodings at equal perplexity)."""
    from ..lm.windows import text_perplexity

    bio = biographies_of(handle)
    if data is not None:
        path = Path(data)
        if not path.is_file():
            raise DataError(f"--data: {path} is not a file (expected prompts, one a line)")
        prompts = [(line.strip(), "") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise DataError(f"--data: {path} holds no prompts")
    else:
        people = sample_of((bio or generate(0)).split("qa"), num_samples, seed)
        prompts = [(f"{p.name} was born on", p.first) for p in people]
    prompts = prompts[:num_samples]
    tok = handle.tokenizer
    from tqdm.auto import tqdm

    def measure(texts: list[str]) -> dict:
        ids = [tok.encode(t) for t in texts]
        contradicted, stated = 0, 0
        for (prompt, first), text in zip(prompts, texts):
            if first:
                facts = stated_facts(prompt + text, first)
                stated += len(facts)
                contradicted += sum(len(v) > 1 for v in facts.values())
        return {
            "contradicted_facts_per_text": contradicted / len(texts) if bio is not None or data is None else None,
            "contradicted_share": contradicted / stated if stated else None,
            "rep_4": sum(repeated_ngram_share(i, 4) for i in ids) / len(ids),
            "distinct_1": sum(distinct_n(i, 1) for i in ids) / len(ids),
            "distinct_2": sum(distinct_n(i, 2) for i in ids) / len(ids),
            "distinct_3": sum(distinct_n(i, 3) for i in ids) / len(ids),
            "perplexity": sum(text_perplexity(handle.model, tok.encode(p) + i) for (p, _), i in zip(prompts, ids))
            / len(ids),
            "tokens": sum(map(len, ids)) / len(ids)}

    def write(options: dict) -> list[str]:
        texts = []
        for j, (prompt, _) in enumerate(prompts):
            if "contrastive" in options:
                k, alpha = options["contrastive"]
                texts.append(tok.decode(contrastive_search(handle.model, encode_prompt(tok, prompt), length, k, alpha)))
            else:
                texts.append(_sample_text(handle, prompt, length, Sampling(**options), seed + j))
            bar.update(1)
        return texts

    sampled = [name for name, options in DECODINGS.items() if options.get("temperature", 0) > 0]
    results: dict[str, dict] = {}
    examples: dict[str, str] = {}
    bar = tqdm(total=(len(DECODINGS) + len(sampled) * SEARCH_STEPS) * len(prompts), desc="writing", unit="text",
               disable=not progress, leave=False)
    for name, options in DECODINGS.items():
        texts = write(options)
        results[name] = measure(texts)
        examples[name] = texts[0][:600]
    reference = results["contrastive"]["perplexity"]
    sweeps = {name: temperature_search(lambda t, o=DECODINGS[name]: measure(write({**o, "temperature": t})),
                                       {"temperature": DECODINGS[name]["temperature"], **results[name]}, reference)
              for name in sampled}
    bar.close()
    matched = {name: at_perplexity(rows, reference) for name, rows in sweeps.items()}
    lines = [f"{len(prompts)} texts of {length} tokens per decoding"
             f" ({'biography openings of seen people' if data is None else data})",
             f"{'decoding':<20} {'contradicted':>12} {'rep-4':>7} {'distinct-2':>10} {'perplexity':>10}"]
    for name, r in results.items():
        c = r["contradicted_facts_per_text"]
        lines.append(f"{name:<20} {'n/a' if c is None else f'{c:.2f}':>12} {r['rep_4']:>7.3f} {r['distinct_2']:>10.3f} "
                     f"{r['perplexity']:>10.2f}")
    lines.append(f"at the contrastive search's perplexity ({reference:.2f}), each sampled decoding at the temperature "
                 "that reaches it:")
    for name, r in matched.items():
        c = r["contradicted_facts_per_text"]
        where = f"T {r['temperature']:.2f}" + ("" if r["reached"] else f", nearest: perplexity {r['perplexity']:.2f}")
        lines.append(f"{name:<20} {'n/a' if c is None else f'{c:.2f}':>12} {r['rep_4']:>7.3f} {r['distinct_2']:>10.3f} "
                     f"{'(' + where + ')':>10}")
    figures = {"length": length, "texts": len(prompts), "decodings": results,
               "equal_perplexity": {"perplexity": reference, "decodings": matched}, "temperature_sweeps": sweeps}
    return LimitsResult("consistency", figures, {"examples": examples}, lines, _draw_consistency)


SEARCH_STEPS = 5            # temperatures tried per sampled decoding to reach the contrastive search's perplexity


def temperature_search(measure, first: dict, target: float, steps: int = SEARCH_STEPS) -> list[dict]:
    """Rows {"temperature", "perplexity", ...} from `first` (the decoding as asked) and up to `steps` more
    temperatures: doubled or halved (within 1/8 to 8) until one row is on each side of perplexity `target`,
    then the geometric mean of the two around it; stops within 5% of the target."""
    rows = [first]
    for _ in range(steps):
        if any(abs(math.log(r["perplexity"] / target)) < 0.05 for r in rows):
            break
        below = [r for r in rows if r["perplexity"] < target]
        above = [r for r in rows if r["perplexity"] > target]
        if below and above:
            low = max(below, key=lambda r: r["perplexity"])["temperature"]
            high = min(above, key=lambda r: r["perplexity"])["temperature"]
            temperature = math.sqrt(low * high)
        elif below:
            temperature = min(8.0, 2 * max(r["temperature"] for r in rows))
        else:
            temperature = max(0.125, min(r["temperature"] for r in rows) / 2)
        if any(math.isclose(temperature, r["temperature"]) for r in rows):
            break
        rows.append({"temperature": temperature, **measure(temperature)})
    return sorted(rows, key=lambda r: r["temperature"])


def at_perplexity(rows: list[dict], target: float) -> dict:
    """The figures of a temperature sweep (rows with "perplexity" and numbers) at perplexity `target`: linear in
    log perplexity between the two rows around it; outside the swept range, the nearest row (reached False)."""
    rows = sorted(rows, key=lambda r: r["perplexity"])
    logs = [math.log(r["perplexity"]) for r in rows]
    t = math.log(target)
    if t <= logs[0] or t >= logs[-1]:
        nearest = rows[0] if t <= logs[0] else rows[-1]
        return {**nearest, "reached": math.isclose(t, logs[0 if t <= logs[0] else -1], rel_tol=1e-9)}
    i = next(i for i in range(1, len(rows)) if logs[i] >= t)
    w = (t - logs[i - 1]) / (logs[i] - logs[i - 1]) if logs[i] > logs[i - 1] else 0.0
    out = {}
    for key, a in rows[i - 1].items():
        b = rows[i][key]
        out[key] = None if a is None or b is None else a + w * (b - a)
    out["perplexity"] = target
    return {**out, "reached": True}


def _draw_consistency(figures, details, axes) -> None:
    results = figures["decodings"]
    names = list(results)
    axes[0].bar(range(len(names)), [results[n]["rep_4"] for n in names])
    axes[0].set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
    axes[0].set(ylabel="repeated 4-gram share", title="repetition")
    for n in names:
        sweep = figures.get("temperature_sweeps", {}).get(n)
        if sweep:
            sweep = sorted(sweep, key=lambda r: r["perplexity"])
            axes[1].plot([r["perplexity"] for r in sweep], [r["distinct_2"] for r in sweep], marker="o", label=n)
        else:
            axes[1].scatter(results[n]["perplexity"], results[n]["distinct_2"], label=n, zorder=3)
    if "equal_perplexity" in figures:
        axes[1].axvline(figures["equal_perplexity"]["perplexity"], color="grey", linestyle=":", linewidth=1)
    axes[1].set(xlabel="perplexity of its own text", ylabel="distinct-2",
                title="diversity vs perplexity (lines: temperature sweeps)")
    axes[1].legend(fontsize=8)


# ----------------------------------------------------------------------------------------------
# context
# ----------------------------------------------------------------------------------------------

SCALINGS = ("none", "linear", "ntk", "yarn")


def context(handle, *, data: str | None = None, num_samples: int = 20, seed: int = 0, multiples=(1, 2, 4, 8),
            progress: bool = True) -> LimitsResult:
    """Perplexity by position up to 8x the training context and passkey retrieval at 1x..8x, with the rotary
    frequencies as trained and stretched by linear interpolation, NTK-aware scaling and YaRN."""
    from ..lm.windows import extend_context, position_losses

    model = handle.model
    cfg = model.config
    trained = cfg.rope_original_context or cfg.block_size
    if cfg.position != "rope":
        raise GenloomError(f"--task context: {handle.path} has {cfg.position} positions; only rotary positions can "
                           "be scaled past the training context")
    longest = trained * max(multiples)
    tok = handle.tokenizer
    from .data import TextData, TextDataConfig

    if data is not None:
        source = TextData(TextDataConfig(path=data), cfg.block_size, tok)
    else:
        source = TextData(handle.config.data, cfg.block_size, tok) if handle.config.data.kind == "text" else None
        if source is None:
            raise GenloomError(f"--task context: {handle.path} was trained on {handle.config.data.kind} data; give a "
                               "text file to score with --data")
    source.prepare()
    val = source._arrays["val"]
    windows = [torch.from_numpy(val[s:s + longest + 1].astype("int64"))
               for s in range(0, len(val) - longest - 1, longest)][:8]
    if not windows:
        raise DataError(f"--task context: the validation split has {len(val)} tokens, fewer than the "
                        f"{longest + 1} that 8x the training context needs; give more text with --data")
    rng = random.Random(seed)
    keys = [str(rng.randrange(10000, 100000)) for _ in range(num_samples)]
    figures: dict = {"trained_context": trained, "lengths": [trained * m for m in multiples], "scalings": {}}
    for kind in SCALINGS:
        if kind == "none" and cfg.rope_scaling != "none":
            scaled = extend_context(model, longest, "keep")
            label = f"as trained ({cfg.rope_scaling})"
        else:
            scaled = extend_context(model, longest, kind, factor=max(multiples) if kind != "none" else 1.0)
            label = kind
        losses = position_losses(scaled, windows)                      # (longest,)
        buckets = [float(losses[b * trained:(b + 1) * trained].mean().exp()) for b in range(max(multiples))]
        passkey = {}
        for m in multiples:
            if trained * m - 8 < len(tok.encode(passkey_text(keys[0], [], []))):
                passkey[str(m)] = None                  # the prompt does not fit this length
                continue
            # Retrieval at m x the context stretches the frequencies by m (the factor a model fine-tuned for that
            # length would use); the perplexity above, over 8x windows, by the largest multiple.
            reader = scaled if kind == "none" else extend_context(model, trained * m, kind, factor=max(m, 1))
            hits = 0
            for j, key in enumerate(keys):
                ids, expected = passkey_prompt(tok, trained * m - 8, key, (j + 0.5) / len(keys))
                out = _greedy(reader, ids, len(tok.encode(expected)) + 1)
                hits += tok.decode(out).startswith(expected)
            passkey[str(m)] = hits / len(keys)
        figures["scalings"][label] = {"perplexity_by_block": buckets, "passkey": passkey}
    # Unbounded generation in bounded memory: the longest windows read token by token through a cache of the
    # training context's size, with 4 attention sinks (StreamingLLM) and without (a plain sliding window).
    from ..lm.windows import SinkCache, streaming_perplexity

    streaming = {}
    for sinks in (4, 0):
        ppl = [streaming_perplexity(model, w.tolist(), sinks, cfg.block_size - 4) for w in windows[:2]]
        streaming[f"sinks_{sinks}"] = sum(ppl) / len(ppl)
    streaming["cache_bytes"] = SinkCache(model, 4, cfg.block_size - 4).nbytes
    figures["streaming"] = streaming
    figures["passkey_factor"] = "m at m x the training context (scaled rows); perplexity: the largest multiple"
    lines = [f"training context {trained} tokens; perplexity per {trained}-token block of {len(windows)} windows "
             f"of {longest} (scaled by {max(multiples)}x); passkey over {len(keys)} keys (scaled by m at m x)"]
    lines.append(f"streaming {longest} tokens through a {cfg.block_size}-position cache "
                 f"({streaming['cache_bytes'] / 1024:.0f} KiB, constant): perplexity {streaming['sinks_4']:.2f} with 4 "
                 f"attention sinks, {streaming['sinks_0']:.2f} with a plain sliding window")
    for label, r in figures["scalings"].items():
        lines.append(f"{label:<22} perplexity " + " ".join(f"{p:.2f}" for p in r["perplexity_by_block"])
                     + " | passkey " + " ".join(f"{m}x {pct(v)}" for m, v in r["passkey"].items()))
    return LimitsResult("context", figures, {}, lines, _draw_context)


def _sample_text(handle, prompt: str, length: int, sampling, seed: int) -> str:
    """`length` tokens continuing `prompt` under `sampling` (its own generator, no stop strings)."""
    generator = torch.Generator(device=handle.device).manual_seed(seed)
    ids = [int(t[0]) for t, _ in generate_tokens(handle.model, [encode_prompt(handle.tokenizer, prompt)], length,
                                                 [generator], sampling)]
    return handle.tokenizer.decode(ids)


@torch.no_grad()
def _greedy(model, ids: list[int], n: int) -> list[int]:
    device = next(model.parameters()).device
    tokens = torch.tensor([ids], device=device)
    out = []
    for _ in range(n):
        token = int(model(tokens)[0, -1].argmax())
        out.append(token)
        tokens = torch.cat([tokens, torch.tensor([[token]], device=device)], dim=1)
    return out


def _draw_context(figures, details, axes) -> None:
    trained = figures["trained_context"]
    for label, r in figures["scalings"].items():
        ppl = r["perplexity_by_block"]
        axes[0].plot([(i + 1) * trained for i in range(len(ppl))], ppl, marker="o", label=label)
        kept = [(int(m), v) for m, v in r["passkey"].items() if v is not None]
        axes[1].plot([m for m, _ in kept], [v for _, v in kept], marker="o", label=label)
    axes[0].axvline(trained, color="k", ls=":")
    axes[0].set(xlabel="position (end of block)", ylabel="perplexity", yscale="log", title="perplexity by position")
    axes[1].set(xlabel="prompt length / training context", ylabel="passkey retrieved", ylim=(0, 1.05),
                xscale="log", title="passkey retrieval")
    axes[1].set_xticks([int(m) for m in next(iter(figures["scalings"].values()))["passkey"]])
    axes[1].get_xaxis().set_major_formatter(__import__("matplotlib").ticker.ScalarFormatter())
    axes[1].get_xaxis().set_minor_formatter(__import__("matplotlib").ticker.NullFormatter())
    for ax in axes:
        ax.legend(fontsize=8)
