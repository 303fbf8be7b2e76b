"""The transformer against Hugging Face `transformers` on the same weights, and its KV cache."""

import pytest
import torch

from genloom.lm.decoding import Sampling, generate_tokens
from genloom.lm.hf import from_hf, to_hf
from genloom.lm.transformer import Transformer, TransformerConfig

transformers = pytest.importorskip("transformers")


def _hf_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=48, n_layer=3, n_head=4,
                                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return transformers.GPT2LMHeadModel(config).eval()


def _hf_llama(tied=False):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=tied)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF initialises norms to 1; make them informative
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _genloom_from(hf_model):
    config, state = from_hf(hf_model.config.to_dict(), hf_model.state_dict())
    model = Transformer(config).eval()
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("make", [_hf_gpt2, _hf_llama, lambda: _hf_llama(tied=True)], ids=["gpt2", "llama", "llama-tied"])
def test_logits_match_transformers(make):
    hf_model = make()
    ours = _genloom_from(hf_model)
    tokens = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(tokens).logits
        got = ours(tokens)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()


@pytest.mark.parametrize("make", [_hf_gpt2, _hf_llama], ids=["gpt2", "llama"])
def test_export_loads_in_transformers_with_same_logits(make):
    hf_model = make()
    ours = _genloom_from(hf_model)
    hf_config, state = to_hf(ours.config, ours.state_dict())
    cls = transformers.GPT2LMHeadModel if hf_config["model_type"] == "gpt2" else transformers.LlamaForCausalLM
    config = transformers.AutoConfig.for_model(**hf_config)
    again = cls(config).eval()
    missing, unexpected = again.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in k or "attn.bias" in k or "masked_bias" in k for k in missing)
    tokens = torch.randint(0, 97, (1, 30))
    with torch.no_grad():
        assert torch.allclose(again(tokens).logits, ours(tokens), atol=1e-4, rtol=0)


def _model(position: str, **kw) -> Transformer:
    torch.manual_seed(0)
    style = dict(norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2) if position == "rope" else {}
    return Transformer(TransformerConfig(vocab_size=50, block_size=64, n_layer=2, n_head=4, d_model=32,
                                         position=position, **style, **kw)).eval()


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_kv_cache_gives_the_same_tokens_as_no_cache(position):
    model = _model(position, init_std=0.3)  # a peaked distribution so greedy decoding is not degenerate
    prompt = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(2)).tolist()

    def run(use_cache, temperature):
        gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
        return torch.stack([t for t, _ in generate_tokens(model, prompt, 50, gens, Sampling(temperature=temperature),
                                                          use_cache=use_cache)], 1)

    for temperature in (0.0, 1.0):
        assert torch.equal(run(True, temperature), run(False, temperature))


def test_cached_logits_match_full_forward():
    model = _model("rope", qk_norm=True)
    tokens = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2)
        parts = [model(tokens[:, :8], cache), model(tokens[:, 8:13], cache)]
        parts += [model(tokens[:, i:i + 1], cache) for i in range(13, 20)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_left_padded_rows_match_unpadded():
    model = _model("rope")
    short, long = torch.randint(0, 50, (1, 5)), torch.randint(0, 50, (1, 9))
    with torch.no_grad():
        expected_short = model(short)[:, -1]
        batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
        cache = model.new_cache(2)
        cache.key_mask = torch.ones(2, 64, dtype=torch.bool)
        cache.key_mask[0, :4] = False
        logits = model(batch, cache)[:, -1]
    assert torch.allclose(logits[0], expected_short[0], atol=1e-5)
    assert torch.allclose(logits[1], model(long)[0, -1], atol=1e-5)
    assert torch.isfinite(logits).all()


def test_context_longer_than_block_is_windowed():
    model = _model("learned")
    gens = [torch.Generator().manual_seed(0)]
    with_cache = [int(t[0]) for t, _ in generate_tokens(model, [[0, 1, 2]], 150, gens, Sampling(temperature=0))]
    assert len(with_cache) == 150
