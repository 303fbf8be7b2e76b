"""Text watermarks: the detector's statistics in closed form, no detection without the key, robustness to
random token replacement, the gumbel scheme's distortion-freeness, and batching == solo."""

from __future__ import annotations

import math
import random
import struct

import numpy as np
import pytest
import torch
from scipy import special

from genloom.core.errors import GenloomError
from genloom.lm.batching import ContinuousBatch, Sequence
from genloom.lm.decoding import Sampling, generate_tokens
from genloom.lm.transformer import Transformer, TransformerConfig
from genloom.watermark.keys import WatermarkKeyError, check_key, keyed_uniform, subkey
from genloom.watermark.text import TextWatermark

KEY = "test-key-0123"


def _model(vocab=200, seed=0):
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=2, d_model=32, position="rope",
                            norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, init_std=0.05)
    return Transformer(cfg).eval()


def _is_green(mark: TextWatermark, context, token) -> bool:
    """Independently of the detector: the definition (HMAC-SHA256 of the sub-key and the context, SHAKE-256)."""
    words = keyed_uniform(subkey(KEY.encode(), "text/green"), struct.pack(f"<{len(context)}I", *context), token + 1)
    return bool(words[token] < mark.gamma)


def test_the_green_z_score_is_the_papers_formula_on_a_hand_made_sequence():
    mark = TextWatermark(KEY, "green", context=1, gamma=0.25)
    tokens = [5, 9, 5, 9, 5, 17, 3, 3, 3, 40, 2]            # (5, 9) occurs twice, (3, 3) twice: scored once each
    pairs = list(dict.fromkeys(zip(tokens[:-1], tokens[1:])))
    assert len(pairs) == 7
    green = sum(_is_green(mark, [a], b) for a, b in pairs)
    T, g = len(pairs), 0.25
    z = (green - g * T) / math.sqrt(T * g * (1 - g))
    got = mark.detect(tokens)
    assert got.scored == T and got.score == green
    assert got.z == pytest.approx(z, abs=1e-12)
    # p = P(Binomial(T, gamma) >= G), summed by hand
    tail = sum(math.comb(T, k) * g**k * (1 - g) ** (T - k) for k in range(green, T + 1))
    assert got.p_value == pytest.approx(tail, rel=1e-9)


def test_the_gumbel_p_value_is_the_gamma_tail_on_a_hand_made_sequence():
    mark = TextWatermark(KEY, "gumbel", context=2)
    tokens = [1, 2, 3, 1, 2, 4, 7]                         # context (1, 2) comes twice: its first token only
    sub = subkey(KEY.encode(), "text/gumbel")
    contexts = {}
    for i in range(2, len(tokens)):
        contexts.setdefault(tuple(tokens[i - 2:i]), tokens[i])
    S = sum(-math.log(1 - keyed_uniform(sub, struct.pack("<2I", *c), t + 1)[t]) for c, t in contexts.items())
    got = mark.detect(tokens)
    assert got.scored == len(contexts) == 4
    assert got.score == pytest.approx(S)
    # P(Gamma(T, 1) >= S) = exp(-S) sum_{k<T} S^k / k!
    tail = math.exp(-S) * sum(S**k / math.factorial(k) for k in range(4))
    assert got.p_value == pytest.approx(tail, rel=1e-9)
    assert special.gammaincc(4, S) == pytest.approx(tail)


@pytest.mark.parametrize("bad", ["short", "has a space in it", "tab\there-xxxxx", "x" * 300, "\x00" * 10])
def test_keys_of_the_wrong_form_are_one_clear_error(bad):
    with pytest.raises(WatermarkKeyError, match="--watermark: a watermark key is 8 to 256"):
        check_key(bad)
    assert check_key("ok-key-123") == b"ok-key-123"
    with pytest.raises(GenloomError, match="schemes are green, gumbel"):
        TextWatermark(KEY, "purple")
    assert KEY not in repr(TextWatermark(KEY))


def _generate(model, watermark, n=120, seed=0, prompt=(1,), temperature=1.0):
    markers = None if watermark is None else [watermark.marker()]
    steps = generate_tokens(model, [list(prompt)], n, [torch.Generator().manual_seed(seed)],
                            Sampling(temperature=temperature), watermarks=markers)
    return [int(t[0]) for t, _ in steps]


@pytest.mark.parametrize("scheme", ["green", "gumbel"])
def test_marked_text_is_detected_only_with_its_key_and_survives_20_percent_replacement(scheme):
    model = _model()
    mark = TextWatermark(KEY, scheme)
    other = TextWatermark("another-key-456", scheme)
    rng = random.Random(0)
    for seed in range(3):
        marked = _generate(model, mark, seed=seed)
        plain = _generate(model, None, seed=seed)
        assert mark.detect(marked).p_value < 1e-6, (seed, mark.detect(marked))
        assert not mark.detect(plain).marked and not other.detect(marked).marked
        assert mark.detect(plain).p_value > 1e-3 and other.detect(marked).p_value > 1e-3
        edited = [rng.randrange(200) if rng.random() < 0.2 else t for t in marked]
        assert sum(a != b for a, b in zip(edited, marked)) >= 15
        assert mark.detect(edited).marked, (seed, mark.detect(edited))


def test_the_gumbel_choice_is_an_exact_sample_of_the_distribution():
    """Distortion-free: over many contexts the keyed argmax r^(1/p) picks each token with its probability."""
    mark = TextWatermark(KEY, "gumbel", context=1)
    probs = np.array([0.5, 0.25, 0.15, 0.1, 0.0])
    picks = np.bincount([mark.marker().choose(probs, [c]) for c in range(6000)], minlength=5) / 6000
    assert picks[4] == 0
    assert np.abs(picks - probs).max() < 0.02, picks           # 3 standard errors at p = 0.5 is 0.019


def test_green_marking_with_greedy_decoding_and_gumbel_refusing_it():
    model = _model()
    marked = _generate(model, TextWatermark(KEY), temperature=0)
    assert TextWatermark(KEY).detect(marked).p_value < 1e-3
    with pytest.raises(GenloomError, match="needs temperature > 0"):
        _generate(model, TextWatermark(KEY, "gumbel"), temperature=0)


@pytest.mark.parametrize("scheme", ["green", "gumbel"])
def test_marked_rows_in_a_continuous_batch_decode_as_alone(scheme):
    model = _model()
    mark = TextWatermark(KEY, scheme)
    plan = [([3, 4, 5], 0, 25, mark), ([7, 8], 3, 30, None), ([1, 2, 3, 4], 6, 20, mark)]  # prompt, join, length
    batch, got, step = ContinuousBatch(model), {}, 0
    while step == 0 or len(batch):
        batch.add([Sequence(list(p), Sampling(temperature=1.0), torch.Generator().manual_seed(i), owner=i,
                            watermark=None if m is None else m.marker())
                   for i, (p, join, _, m) in enumerate(plan) if join == step])
        tokens, _ = batch.step()
        keep = []
        for row, token in zip(batch.rows, tokens):
            got.setdefault(row.owner, []).append(token)
            keep.append(len(got[row.owner]) < plan[row.owner][2])
        batch.remove(keep)
        step += 1
    for i, (prompt, _, n, m) in enumerate(plan):
        assert got[i] == _generate(model, m, n=n, seed=i, prompt=prompt), i
