"""Rotary scaling (linear, NTK-aware, YaRN) against the papers' formulas and transformers' rope init functions;
a model stretched past its context; contrastive search and no-repeat n-grams."""

from __future__ import annotations

import math

import pytest
import torch

from genloom.core.errors import GenloomError
from genloom.lm.decoding import Sampling, ban_repeated_ngrams, contrastive_search, generate_tokens
from genloom.lm.transformer import Transformer, TransformerConfig
from genloom.lm.windows import extend_context
from genloom.nn.attention import RopeScaling, rope_frequencies

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402


def _hf(rope: dict, dim: int = 64, max_positions: int = 2048):
    config = LlamaConfig(hidden_size=dim * 4, num_attention_heads=4, max_position_embeddings=max_positions,
                         rope_parameters={"rope_theta": 10000.0, **rope})
    return config


def yarn_paper(dim: int, theta: float, factor: float, original: int, alpha: float = 1.0, beta: float = 32.0):
    """YaRN, Peng et al. 2023, eq. 16-19 written out from the paper: r(d) = L / lambda_d rotations of dimension d
    within the original context; gamma ramps from 0 (r < alpha: interpolate) to 1 (r > beta: keep);
    h(theta_d) = (1 - gamma) theta_d / s + gamma theta_d; attention scale sqrt(1/t) = 0.1 ln(s) + 1."""
    out = []
    for i in range(dim // 2):
        freq = theta ** (-2 * i / dim)
        rotations = original / (2 * math.pi / freq)
        gamma = min(max((rotations - alpha) / (beta - alpha), 0.0), 1.0)
        out.append((1 - gamma) * freq / factor + gamma * freq)
    return torch.tensor(out, dtype=torch.float64), 0.1 * math.log(factor) + 1


@pytest.mark.parametrize("factor,original", [(4.0, 128), (8.0, 2048), (16.0, 4096)])
def test_yarn_matches_transformers(factor, original):
    ours, scale, _ = rope_frequencies(64, 10000.0, RopeScaling("yarn", factor, original))
    config = _hf({"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original},
                 max_positions=int(original * factor))
    theirs, their_scale = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-5, atol=1e-7)
    assert scale == pytest.approx(their_scale)


@pytest.mark.parametrize("factor,original", [(4.0, 128), (8.0, 2048)])
def test_yarn_follows_the_papers_formula(factor, original):
    # The paper writes the ramp as linear in the rotations r; its reference code (and transformers, and genloom)
    # makes it linear in the dimension index between the dimensions where r = beta and r = alpha (r is
    # exponential in the index), so the two agree exactly outside the ramp (gamma 0 or 1) and only bound
    # each other inside it. Compare there, untruncated, and the attention scale.
    ours, scale, _ = rope_frequencies(64, 10000.0, RopeScaling("yarn", factor, original, truncate=False))
    paper, paper_scale = yarn_paper(64, 10000.0, factor, original)
    base = 10000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    rotations = original * base / (2 * math.pi)
    outside = (rotations > 32) | (rotations < 1)
    assert outside.sum() > 4
    torch.testing.assert_close(ours[outside], paper[outside])
    assert scale == pytest.approx(paper_scale)
    # inside the ramp both interpolate between theta/s and theta
    inside = ~outside
    assert ((ours[inside] <= base[inside] + 1e-12) & (ours[inside] >= base[inside] / factor - 1e-12)).all()


def test_linear_and_ntk_match_transformers():
    linear, _, _ = rope_frequencies(64, 10000.0, RopeScaling("linear", 4.0))
    theirs, _ = ROPE_INIT_FUNCTIONS["linear"](_hf({"rope_type": "linear", "factor": 4.0}), "cpu")
    torch.testing.assert_close(linear.float(), theirs.float())
    # Static NTK-aware = transformers' dynamic NTK at the length where its base multiplier equals the factor:
    # factor * L / max - (factor - 1) = factor  <=>  L = max (2 factor - 1) / factor.
    ntk, scale, _ = rope_frequencies(64, 10000.0, RopeScaling("ntk", 4.0))
    config = _hf({"rope_type": "dynamic", "factor": 4.0}, max_positions=128)
    theirs, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, "cpu", seq_len=128 * 7 // 4)
    torch.testing.assert_close(ntk.float(), theirs.float(), rtol=1e-5, atol=1e-8)
    assert scale == 1.0
    # NTK keeps the highest frequency and interpolates the lowest by the factor (closed form)
    base = rope_frequencies(64, 10000.0)[0]
    assert ntk[0] == base[0]
    assert float(base[-1] / ntk[-1]) == pytest.approx(4.0, rel=1e-9)


def _tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, d_model=32, position="rope", **kw)
    return Transformer(cfg).eval()


def test_extend_context_keeps_the_model_within_its_context_and_refuses_too_far():
    model = _tiny()
    tokens = torch.randint(0, 40, (1, 32))
    with torch.no_grad():
        same = extend_context(model, 256, "none")(tokens)
        torch.testing.assert_close(same, model(tokens))
        long = extend_context(model, 256, "yarn", factor=8.0)
        assert long(torch.randint(0, 40, (1, 256))).shape == (1, 256, 40)
    assert model.config.block_size == 32 and model.rotary.cos.shape[0] == 32     # the original is untouched
    with pytest.raises(GenloomError, match="longer than this model can be scaled to"):
        extend_context(model, 32 * 65, "yarn", factor=65.0)
    with pytest.raises(GenloomError, match="learned positions"):
        extend_context(Transformer(TransformerConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, d_model=16,
                                                     position="learned")), 64, "linear", factor=4.0)


def _contrastive_reference(model, prompt, steps, k, alpha):
    """Su et al. 2022 eq. 5, written naively: every candidate's hidden state from a full forward pass."""
    hidden = []
    hook = model.final_norm.register_forward_hook(lambda m, i, o: hidden.append(o))
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            hidden.clear()
            probs = model(torch.tensor([tokens]))[0, -1].softmax(-1)
            context = hidden[-1][0]
            best, best_score = None, -math.inf
            for p, v in zip(*probs.topk(k)):
                hidden.clear()
                model(torch.tensor([tokens + [int(v)]]))
                h = hidden[-1][0, -1]
                penalty = max(float(torch.cosine_similarity(h, c, dim=0)) for c in context)
                score = (1 - alpha) * float(p) - alpha * penalty
                if score > best_score:
                    best, best_score = int(v), score
            tokens.append(best)
    hook.remove()
    return tokens[len(prompt):]


def test_contrastive_search_is_the_papers_rule_and_greedy_at_alpha_zero():
    model = _tiny()
    prompt = [3, 7, 1, 9]
    assert contrastive_search(model, prompt, 12, 4, 0.6) == _contrastive_reference(model, prompt, 12, 4, 0.6)
    greedy = [int(t) for t, _ in generate_tokens(model, [prompt], 12, [torch.Generator()], Sampling(temperature=0))]
    assert contrastive_search(model, prompt, 12, 4, 0.0) == greedy
    assert contrastive_search(model, prompt, 12, 4, 0.9) != greedy


def test_contrastive_search_with_the_cache_is_the_search_without_it():
    model = _tiny()
    block = model.config.block_size
    prompt = [3, 7, 1, 9]
    with torch.no_grad():
        cached = contrastive_search(model, prompt, block - len(prompt), 4, 0.6)
        assert cached == contrastive_search(model, prompt, block - len(prompt), 4, 0.6, use_cache=False)
        long = contrastive_search(model, prompt, 3 * block, 4, 0.6)       # past the context: refilled, no error
    assert len(long) == 3 * block and long[:len(cached)] == cached


def test_no_repeat_ngram_matches_transformers_and_never_repeats():
    from transformers import NoRepeatNGramLogitsProcessor

    torch.manual_seed(1)
    tokens = torch.randint(0, 5, (3, 20))
    valid = torch.ones_like(tokens, dtype=torch.bool)
    logits = torch.randn(3, 5)
    for n in (1, 2, 3):
        theirs = NoRepeatNGramLogitsProcessor(n)(tokens, logits.clone())
        ours = ban_repeated_ngrams(logits, tokens, valid, [n] * 3)
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    model = _tiny()
    out = [int(t) for t, _ in generate_tokens(model, [[1, 2]], 40, [torch.Generator().manual_seed(0)],
                                              Sampling(temperature=1.0, no_repeat_ngram=2))]
    seq = [1, 2] + out
    grams = [tuple(seq[i:i + 2]) for i in range(len(seq) - 1)]
    assert len(grams) == len(set(grams))


def test_attention_sinks_equal_recomputing_the_kept_tokens_and_hold_memory_flat():
    from genloom.lm.windows import SinkCache, streaming_perplexity

    # One layer: cached keys/values depend only on each token and its slot, so evicting with re-rotation must
    # give exactly the logits of a fresh pass over [sink tokens] + [the window's tokens] at slot positions.
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=40, block_size=32, n_layer=1, n_head=2, d_model=32,
                                          position="rope")).eval()
    tokens = torch.randint(0, 40, (120,)).tolist()
    sinks, window = 4, 12
    cache = SinkCache(model, sinks, window)
    size = cache.nbytes
    for t, token in enumerate(tokens):
        logits = cache.step(token)
        kept = tokens[:min(sinks, t + 1)] + tokens[max(sinks, t + 1 - (window)):t + 1] if t + 1 > sinks + window \
            else tokens[:t + 1]
        with torch.no_grad():
            expected = model(torch.tensor([kept]))[0, -1]
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert cache.nbytes == size and cache.cache.length == sinks + window
    deep = _tiny()
    assert math.isfinite(streaming_perplexity(deep, tokens, 4))      # 120 tokens through a 32-position model
    with pytest.raises(GenloomError, match="must fit the context"):
        SinkCache(deep, 4, 40)
