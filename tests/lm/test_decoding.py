"""Decoding features: filters, penalties, stop strings, batches of prompts, beams, speculative decoding."""

import itertools
import math
import random
import time

import torch

from genloom.lm.decoding import (
    Sampling,
    StopMatcher,
    generate_tokens,
    process_logits,
    sample_next,
)
from genloom.lm.search import beam_search, speculative_tokens
from genloom.lm.transformer import Transformer, TransformerConfig


def kept(logits):
    return torch.isfinite(logits)[0].tolist()


def test_filters_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert kept(process_logits(logits, Sampling(top_k=2))) == [True, True, False, False]
    assert kept(process_logits(logits, Sampling(top_p=0.5))) == [True, False, False, False]
    assert kept(process_logits(logits, Sampling(top_p=0.8))) == [True, True, False, False]
    assert kept(process_logits(logits, Sampling(top_p=0.81))) == [True, True, True, False]
    assert kept(process_logits(logits, Sampling(min_p=0.3))) == [True, True, True, False]  # 0.15 >= 0.3 * 0.5
    assert kept(process_logits(logits, Sampling(min_p=0.61))) == [True, False, False, False]
    probs = process_logits(logits, Sampling(temperature=2.0)).softmax(-1)
    expected = torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt()
    assert torch.allclose(probs[0], expected / expected.sum())


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    seen = torch.tensor([[True, True, False]])
    out = process_logits(logits, Sampling(repetition_penalty=2.0), seen)
    assert out.tolist() == [[1.0, -2.0, 0.5]]
    # greedy decoding honours it too
    assert sample_next(torch.tensor([[2.0, 1.5]]), [], Sampling(temperature=0, repetition_penalty=2.0),
                       torch.tensor([[True, False]])).tolist() == [1]


def test_sampling_frequencies_follow_the_distribution():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next(logits, [g]) for _ in range(4000)])
    freq = torch.bincount(draws, minlength=3).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.03)


def test_stop_strings_cut_streamed_text():
    m = StopMatcher(["\n\n", "END"])
    pieces = [m.push(p) for p in ["Hello", " wor", "ld\n", "\nmore"]]
    assert "".join(pieces) == "Hello world" and m.stopped
    m = StopMatcher(["END"])
    assert m.push("abcE") == "abc" and m.push("N") == "" and m.push("x") == "ENx"
    assert m.flush() == ""


def _reference_cut(text: str, stops: list[str]) -> str:
    """The text before the stop string that completes first (the longest one, when several end together)."""
    ends = [(text.find(s) + len(s), -len(s)) for s in stops if s and s in text]
    if not ends:
        return text
    end, minus_length = min(ends)
    return text[:end + minus_length]


def test_stop_strings_cut_where_a_plain_search_does_for_any_split_of_the_text():
    rng = random.Random(0)
    for _ in range(400):
        stops = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 3))]
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        m = StopMatcher(stops)
        out = "".join(m.push(p) for p in pieces) + m.flush()
        assert out == _reference_cut(text, stops), (stops, pieces)
        assert m.stopped == (out != text or any(s in text for s in stops))


def test_long_stop_strings_are_matched_in_linear_time():
    # 4 stop strings of 60,000 characters that the text keeps almost matching: the old matcher took seconds
    # per token here (it compared every prefix of every stop with the end of the text at every piece).
    stops = ["a" * 59_999 + end for end in "bcde"]
    start = time.perf_counter()
    m = StopMatcher(stops)
    emitted = "".join(m.push("a" * 8) for _ in range(2_000))          # 16,000 characters, all held back
    assert emitted == "" and not m.stopped
    assert m.push("a" * 44_000 + "dzz") == "a" and m.stopped           # stops[2] completes after one "a"
    m = StopMatcher(stops)
    assert m.push("x" + "a" * 70_000) == "x" + "a" * 10_001 and m.flush() == "a" * 59_999
    assert time.perf_counter() - start < 2.0


def _peaked_model(vocab=50, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab, block_size=64, n_layer=2, n_head=4, d_model=32, position="rope", norm="rmsnorm",
               mlp="swiglu", bias=False, tie_embeddings=False, init_std=0.3)
    return Transformer(TransformerConfig(**{**cfg, **kw})).eval()


def test_prompts_of_different_lengths_batch_like_singles():
    model = _peaked_model()
    prompts = [[3, 4, 5], [7, 8, 9, 10, 11, 12, 13], [1]]
    batch = torch.stack([t for t, _ in generate_tokens(model, prompts, 30, [torch.Generator()] * 3,
                                                       Sampling(temperature=0))], 1)
    for row, prompt in enumerate(prompts):
        alone = torch.stack([t for t, _ in generate_tokens(model, [prompt], 30, [torch.Generator()],
                                                           Sampling(temperature=0))], 1)
        assert torch.equal(batch[row], alone[0])
    # and the uncached reference agrees
    reference = torch.stack([t for t, _ in generate_tokens(model, prompts, 30, [torch.Generator()] * 3,
                                                           Sampling(temperature=0), use_cache=False)], 1)
    assert torch.equal(batch, reference)


def test_rows_joining_and_leaving_a_running_batch_decode_as_alone():
    """Continuous batching: rows join at different steps and finish at different lengths; each row's tokens and
    log-probabilities are those it gets decoded alone, even after the rows that set the cache's length have
    left (their padding must go with them, or the cache fills up before any row's text reaches the context)."""
    from genloom.lm.batching import ContinuousBatch, Sequence

    model = _peaked_model(block_size=32)
    plan = [([3, 4, 5], 0, 20), ([7, 8], 4, 26), ([1, 2, 3, 4, 5, 6], 9, 20), ([9], 14, 30)]  # prompt, join, length

    def alone(prompt, n):
        steps = list(generate_tokens(model, [prompt], n, [torch.Generator()], Sampling(temperature=0)))
        return [int(t[0]) for t, _ in steps], [float(lp[0]) for _, lp in steps]

    batch, got, step = ContinuousBatch(model), {}, 0
    while step == 0 or len(batch):
        batch.add([Sequence(list(p), Sampling(temperature=0), torch.Generator(), owner=i)
                   for i, (p, join, _) in enumerate(plan) if join == step])
        tokens, logprobs = batch.step()
        keep = []
        for row, token, logprob in zip(batch.rows, tokens, logprobs):
            got.setdefault(row.owner, ([], []))
            got[row.owner][0].append(token)
            got[row.owner][1].append(logprob)
            keep.append(len(got[row.owner][0]) < plan[row.owner][2])
        batch.remove(keep)
        step += 1
    assert sorted(got) == [0, 1, 2, 3]
    for i, (prompt, _, n) in enumerate(plan):
        tokens, logprobs = alone(prompt, n)
        assert got[i][0] == tokens, i
        assert torch.allclose(torch.tensor(got[i][1]), torch.tensor(logprobs), atol=1e-4), i


def test_logprobs_are_the_models_log_probabilities():
    model = _peaked_model()
    prompt = [3, 4, 5]
    steps = list(generate_tokens(model, [prompt], 5, [torch.Generator().manual_seed(1)]))
    tokens = [int(t[0]) for t, _ in steps]
    with torch.no_grad():
        full = model(torch.tensor([prompt + tokens])).log_softmax(-1)[0]
    for i, (token, (_, logprob)) in enumerate(zip(tokens, steps)):
        assert math.isclose(float(logprob[0]), float(full[len(prompt) - 1 + i, token]), abs_tol=1e-4)


def _sequence_logprob(model, prompt, continuation):
    with torch.no_grad():
        logp = model(torch.tensor([prompt + continuation])).log_softmax(-1)[0]
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(continuation))


def test_beam_search_finds_the_exact_best_sequence_when_wide_enough():
    model = _peaked_model(vocab=4, init_std=1.0)
    prompt = [1, 2]
    best = max(itertools.product(range(4), repeat=3), key=lambda c: _sequence_logprob(model, prompt, list(c)))
    beams = beam_search(model, prompt, 3, num_beams=16)
    assert tuple(beams[0].tokens) == best
    assert math.isclose(beams[0].logprob, _sequence_logprob(model, prompt, list(best)), abs_tol=1e-4)
    # one beam is greedy decoding
    greedy = [int(t[0]) for t, _ in generate_tokens(model, [prompt], 3, [None], Sampling(temperature=0))]
    assert beam_search(model, prompt, 3, num_beams=1)[0].tokens == greedy


def test_speculative_greedy_equals_target_greedy():
    target, draft = _peaked_model(seed=0), _peaked_model(seed=1, n_layer=1, d_model=16)
    prompt = [3, 4, 5]
    expected = [int(t[0]) for t, _ in generate_tokens(target, [prompt], 40, [None], Sampling(temperature=0))]
    stats = {}
    got = list(speculative_tokens(target, draft, prompt, 40, torch.Generator(), Sampling(temperature=0), 4, stats))
    assert got == expected and stats["proposed"] > 0
    # a draft that is the target itself is always right
    stats = {}
    assert list(speculative_tokens(target, target, prompt, 40, torch.Generator(), Sampling(temperature=0), 4,
                                   stats)) == expected
    assert stats["accepted"] == stats["proposed"]


def test_speculative_sampling_has_the_target_distribution():
    """Over two tokens of a 5-token vocabulary, compare with the exact target probabilities."""
    target = _peaked_model(vocab=5, seed=0, init_std=0.5)
    draft = _peaked_model(vocab=5, seed=3, n_layer=1, d_model=16, init_std=0.5)
    prompt, sampling = [1, 2], Sampling(temperature=1.0, top_k=4)
    exact = {}
    with torch.no_grad():
        first = process_logits(target(torch.tensor([prompt]))[:, -1], sampling).softmax(-1)[0]
        for a in range(5):
            second = process_logits(target(torch.tensor([prompt + [a]]))[:, -1], sampling).softmax(-1)[0]
            for b in range(5):
                exact[(a, b)] = float(first[a] * second[b])
    n = 3000
    counts = {}
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        pair = tuple(speculative_tokens(target, draft, prompt, 2, g, sampling, lookahead=2))
        counts[pair] = counts.get(pair, 0) + 1
    total_variation = 0.5 * sum(abs(counts.get(k, 0) / n - p) for k, p in exact.items())
    assert total_variation < 0.05, total_variation
    assert all(exact[k] > 0 for k in counts)  # never a token the filtered target forbids


def test_int8_weights_stay_close_to_fp32():
    from genloom.nn.quantize import Int8Linear, quantize_int8

    for tied in (True, False):
        model = _peaked_model(init_std=0.05, tie_embeddings=tied)
        tokens = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            reference = model(tokens)
            quantize_int8(model)
            got = model(tokens)
        assert isinstance(model.blocks[0].attn.qkv, Int8Linear) and isinstance(model.head, Int8Linear)
        relative = (got - reference).norm() / reference.norm()
        assert relative < 0.02, relative
