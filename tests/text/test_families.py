"""Open-weights families: tiny random `transformers` models imported, compared logit for logit and token for
token (greedy, with genloom's KV cache), exported back and loaded by `transformers` again.

Every model is built from its config with a fixed seed (no download), in fp32 with eager attention, and
its norms and biases are made informative (transformers initialises them to 1/0). Sequences of 24 tokens run
past the 8-token sliding windows and past the original context (8 or 16) of the rope-scaling variants.
"""

from __future__ import annotations

import json

import pytest
import torch

from genloom import load
from genloom.core.errors import ConfigError
from genloom.lm.decoding import Sampling, generate_tokens
from genloom.lm.hf import from_hf, to_hf
from genloom.lm.tokenizers import TextTokenizer
from genloom.lm.transformer import Transformer, TransformerConfig
from genloom.text.convert import export_hf, import_hf

transformers = pytest.importorskip("transformers")

VOCAB, LENGTH, NEW = 96, 24, 22
BASE = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, initializer_range=0.08,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)
LONGROPE = dict(rope_type="longrope", short_factor=[1.0, 1.1, 1.3, 1.6, 2.0, 2.5],
                long_factor=[1.0, 1.5, 2.5, 4.0, 6.0, 8.0], original_max_position_embeddings=16)

# name: (model_type, config keys beyond BASE). Windows of 8 and original contexts of 8 or 16 are passed by
# the 24-token inputs.
CASES = {
    "llama": ("llama", dict(rope_theta=500.0)),
    "llama-tied-headdim": ("llama", dict(head_dim=16, tie_word_embeddings=True, attention_bias=True)),
    "llama3.1": ("llama", dict(rope_parameters=dict(rope_type="llama3", rope_theta=5000.0, factor=4.0,
                                                    low_freq_factor=1.0, high_freq_factor=4.0,
                                                    original_max_position_embeddings=8))),
    "llama-linear": ("llama", dict(rope_parameters=dict(rope_type="linear", rope_theta=1000.0, factor=2.0))),
    "llama-yarn": ("llama", dict(rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                                      original_max_position_embeddings=16))),
    "smollm2": ("llama", dict(num_key_value_heads=4, tie_word_embeddings=True, rope_theta=100000.0)),
    "mistral": ("mistral", dict(sliding_window=8)),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1000000.0)),
    "qwen2-window": ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1)),
    "qwen3": ("qwen3", dict(head_dim=24, tie_word_embeddings=True)),
    "phi3": ("phi3", dict(num_key_value_heads=4)),
    "phi3-longrope": ("phi3", dict(rope_parameters=dict(LONGROPE, rope_theta=10000.0, partial_rotary_factor=1.0),
                                   original_max_position_embeddings=16, sliding_window=8)),
    "phi4-mini-partial": ("phi3", dict(partial_rotary_factor=0.5, tie_word_embeddings=True)),
    "gemma": ("gemma", dict(head_dim=16, num_key_value_heads=1)),
    "gemma2": ("gemma2", dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                              final_logit_softcapping=3.0, attn_logit_softcapping=2.0)),
    "gemma3": ("gemma3_text", dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                                   layer_types=["sliding_attention", "full_attention"],
                                   rope_parameters={"sliding_attention": dict(rope_type="default", rope_theta=10000.0),
                                                    "full_attention": dict(rope_type="linear", factor=2.0,
                                                                           rope_theta=1000000.0)})),
    "olmo2": ("olmo2", dict()),
}
PARITY: dict[str, float] = {}   # name -> max |logit diff| (printed at the end with -s; docs/open-models.md)


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    TextTokenizer.train_char("abcdefghijklmnopqrstuvwxyz ,.\n").save(path)
    return path


def make_hf(model_type: str, extra: dict):
    config = transformers.AutoConfig.for_model(model_type, **{**BASE, **extra})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():   # informative norms (1 or 0 at init) and biases (0 at init)
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.3)
    return model


def save(model, folder, tokenizer_json):
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    return folder


def tokens(batch: int = 2, length: int = LENGTH) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(7))


def hf_greedy(model, prompts: list[list[int]]) -> list[list[int]]:
    """transformers' greedy generate on left-padded prompts, no early stop."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=0, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[:, width:].tolist()


def genloom_greedy(model, prompts: list[list[int]]) -> list[list[int]]:
    gens = [torch.Generator().manual_seed(0) for _ in prompts]
    steps = [t for t, _ in generate_tokens(model, prompts, NEW, gens, Sampling(temperature=0))]
    return torch.stack(steps, 1).tolist()


@pytest.mark.parametrize("name", list(CASES))
def test_family_matches_transformers(name, tmp_path, tokenizer_json):
    model_type, extra = CASES[name]
    hf = make_hf(model_type, extra)
    ours = load(import_hf(save(hf, tmp_path / "hf", tokenizer_json), tmp_path / "ours"))
    assert ours.model.config.family == model_type
    x = tokens()
    with torch.no_grad():
        expected, got = hf(x).logits, ours.model(x)
    diff = float((got - expected).abs().max())
    PARITY[name] = diff
    assert diff < 1e-4, f"{name}: max |logit diff| {diff:.2e}"

    # greedy decoding with genloom's KV cache, a batch of two prompts of different lengths (left padding)
    prompts = [x[0, :6].tolist(), x[1, :3].tolist()]
    assert genloom_greedy(ours.model, prompts) == hf_greedy(hf, prompts)

    # export, then transformers loads the folder with the same logits
    exported = export_hf(ours, tmp_path / "export")
    assert json.loads((exported / "config.json").read_text())["model_type"] == model_type
    again = transformers.AutoModelForCausalLM.from_pretrained(exported, attn_implementation="eager").eval()
    with torch.no_grad():
        back = again(x).logits
    assert float((back - got).abs().max()) < 1e-4


def test_old_config_formats_read_the_same(tmp_path, tokenizer_json):
    """Hub configs written before transformers 5: rope_theta + rope_scaling (Llama 3.1), rope_local_base_freq
    (Gemma 3), rope type "su" (Phi-3)."""
    def without_rope(c):
        return {k: v for k, v in c.items() if k != "rope_parameters"}

    longrope = {k: v for k, v in LONGROPE.items() if k != "original_max_position_embeddings"}
    cases = [("llama3.1", lambda c: {**without_rope(c), "rope_theta": c["rope_parameters"]["rope_theta"],
                                     "rope_scaling": {k: v for k, v in c["rope_parameters"].items()
                                                      if k != "rope_theta"}}),
             ("gemma3", lambda c: {**without_rope(c), "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
                                   "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
             ("phi3-longrope", lambda c: {**without_rope(c), "rope_theta": 10000.0,
                                          "rope_scaling": {**longrope, "type": "su"}})]
    for name, old_style in cases:
        hf = make_hf(*CASES[name])
        new = hf.config.to_dict()
        new_cfg, _ = from_hf(new, hf.state_dict())
        old_cfg, _ = from_hf(old_style(new), hf.state_dict())
        assert old_cfg == new_cfg, name


def test_a_sliding_window_model_of_genloom_decodes_the_same_with_and_without_cache():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=50, block_size=40, n_layer=3, n_head=4, n_kv_head=2, d_model=32, mlp="swiglu",
                            norm="rmsnorm", position="rope", bias=False, sliding_window=5, global_layers=(1,),
                            init_std=0.3)
    model = Transformer(cfg).eval()
    x = torch.randint(0, 50, (2, 30))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2)
        steps = torch.cat([model(x[:, :9], cache)] + [model(x[:, i:i + 1], cache) for i in range(9, 30)], 1)
    assert torch.allclose(full, steps, atol=1e-5)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9]]
    cached = genloom_greedy(model, prompts)
    gens = [torch.Generator().manual_seed(0) for _ in prompts]
    plain = torch.stack([t for t, _ in generate_tokens(model, prompts, NEW, gens, Sampling(temperature=0),
                                                         use_cache=False)], 1).tolist()
    assert cached == plain


def test_genloom_qk_norm_exports_as_qwen3_with_unit_weights():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, d_model=32, mlp="swiglu", norm="rmsnorm",
                            position="rope", bias=False, qk_norm=True, tie_embeddings=False, init_std=0.2)
    model = Transformer(cfg).eval()
    hf_cfg, state = to_hf(cfg, model.state_dict())
    assert hf_cfg["model_type"] == "qwen3"
    again = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf_cfg)).eval()
    again.load_state_dict(state, strict=False)
    x = torch.randint(0, 50, (1, 20))
    with torch.no_grad():
        assert torch.allclose(again(x).logits, model(x), atol=1e-4, rtol=0)


def test_unsupported_inputs_are_refused_in_one_line(tmp_path, tokenizer_json):
    with pytest.raises(ConfigError, match=r"model_type 'mamba' is not supported \(supported: gpt2, llama, .*olmo2\)"):
        from_hf({"model_type": "mamba"}, {})
    hf = make_hf("llama", {})
    config = hf.config.to_dict()
    with pytest.raises(ConfigError, match="rope_type 'dynamic' is not supported"):
        from_hf({**config, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
                hf.state_dict())
    extra = {**hf.state_dict(), "model.layers.0.self_attn.q_norm.weight": torch.ones(12)}
    with pytest.raises(ConfigError, match="does not use, e.g. model.layers.0.self_attn.q_norm.weight"):
        from_hf(config, extra)
    with pytest.raises(ConfigError, match="has shape"):
        from_hf({**config, "intermediate_size": 64}, hf.state_dict())


def test_print_parity():
    """Not a check: prints the figures docs/open-models.md quotes (run with -s)."""
    for name, diff in PARITY.items():
        print(f"parity {name:22s} {diff:.1e}")
