"""Weight-only int4 (and int8) quantization: the error bound, the kernel's layout, models, the options."""

import pytest
import torch
import torch.nn.functional as F

from genloom.core.errors import GenloomError
from genloom.lm.decoding import Sampling, generate_tokens
from genloom.lm.transformer import Transformer, TransformerConfig
from genloom.nn.quantize import Int4Linear, Int8Linear, int4_group_size, int4_quantize, quantize_int4


def _hard_weights(out_features=48, in_features=256, seed=0):
    """Weights whose groups differ in scale by 1000x, with outliers, a constant group and a group far
    from zero (where a zero point rounded to bf16 is off by more than half a step of a naive scale)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g)
    w *= torch.logspace(-3, 0, out_features)[:, None]
    w[0, 5] = 4.0                                    # an outlier
    w[1, :32] = 0.25                                 # a constant group
    w[2, 32:64] = 10.0 + 0.01 * torch.rand(32, generator=g)
    return w


def _scales(layer: Int4Linear) -> torch.Tensor:
    """The scale of each weight's group, (out, in)."""
    s = layer.scales_and_zeros[..., 0].float().t().repeat_interleave(layer.group, dim=1)
    return s[:layer.out_features, :layer.in_features]


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_round_trip_is_within_half_a_step(group):
    # Derivation: each group spans [zero - 8 s, zero + 7 s] (codes 0..15, w_hat = (code - 8) s + zero) and
    # the quantizer picks s so that [min, max] of the group lies inside; rounding to the nearest code then
    # moves a weight by at most s / 2. And s is the smallest such: (max - min) / 15, up to bf16 rounding.
    w = _hard_weights()
    layer = Int4Linear(weight=w, group_size=group)
    assert layer.group == group
    w_hat = layer.dequantize()
    s = _scales(layer)
    error = (w - w_hat).abs()
    assert (error <= s / 2 * (1 + 1e-5) + 1e-7).all(), (error / s).max()
    assert (error / s).max() > 0.45                                   # the bound is tight, not vacuous
    groups = w.reshape(w.shape[0], -1, group)
    spread = (groups.amax(-1) - groups.amin(-1)) / 15
    stored = layer.scales_and_zeros[..., 0].float().t()[:w.shape[0]]
    normal = spread > 1e-6
    normal[2] = False   # far from zero, bf16 zero points are 0.06 apart: the scale grows to keep the bound
    assert (stored[normal] <= spread[normal] * 1.02).all()          # no larger than the range needs
    assert (w_hat[1, :32] - 0.25).abs().max() < 1e-3 and (w_hat[0, 5] - 4.0).abs() < s[0, 5] / 2


def test_int4_linear_matches_a_dequantised_matmul():
    torch.manual_seed(0)
    for in_features, out_features, group in [(256, 64, 128), (96, 33, 128), (100, 50, 32), (768, 48, 64)]:
        linear = torch.nn.Linear(in_features, out_features)
        layer = Int4Linear(linear, group_size=group)
        # the reference from the codes, scales and zero points themselves, not from the packed layout
        g, padded = int4_group_size(in_features, group)
        codes, scale, zero = int4_quantize(F.pad(linear.weight.detach(), (0, padded - in_features)), g)
        w_hat = (codes.float() - 8) * scale.float().repeat_interleave(g, 1) + zero.float().repeat_interleave(g, 1)
        assert torch.equal(w_hat[:, :in_features], layer.dequantize())
        x = torch.randn(2, 3, in_features)
        expected = x.to(torch.bfloat16).float() @ w_hat[:, :in_features].t() + linear.bias.detach()
        got = layer(x)
        assert got.shape == (2, 3, out_features) and got.dtype == torch.float32
        relative = (got - expected).norm() / expected.norm()
        assert relative < 5e-3, (in_features, out_features, relative)    # bf16 output rounding: ~2e-3
        assert (got - expected).abs().max() < 0.02 * expected.abs().max()
    # in_features 96 is not a multiple of 128: the group falls back to 32 (no padding); 100 is padded
    assert int4_group_size(96, 128) == (32, 96) and int4_group_size(100, 32) == (32, 128)
    assert int4_group_size(768, 128) == (128, 768) and int4_group_size(192, 128) == (64, 192)


def test_group_sizes_the_kernel_lacks_are_refused():
    with pytest.raises(GenloomError, match="32, 64, 128, 256"):
        Int4Linear(torch.nn.Linear(64, 16), group_size=48)
    with pytest.raises(GenloomError, match="group size 16"):
        quantize_int4(_model(), group_size=16)


def _model(tied=False, seed=0):
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(vocab_size=70, block_size=64, n_layer=2, n_head=4, d_model=64,
                                         position="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                                         tie_embeddings=tied, init_std=0.05)).eval()


def test_int4_model_with_a_tied_head_stays_close_and_decodes_deterministically():
    tokens = torch.randint(0, 70, (2, 24), generator=torch.Generator().manual_seed(0))
    for tied in (True, False):
        model = _model(tied)
        with torch.no_grad():
            reference = model(tokens)
            quantize_int4(model)
            got = model(tokens)
        assert model.quantized == "int4" and isinstance(model.head, Int4Linear)
        assert isinstance(model.blocks[0].attn.qkv, Int4Linear) and model.blocks[0].attn.qkv.group == 64
        assert isinstance(model.embed, torch.nn.Embedding) and model.embed.weight.dtype == torch.float32
        if tied:   # the head is a quantized copy of the embedding, which stays as it was
            assert (model.head.dequantize() - model.embed.weight).abs().max() <= _scales(model.head).max() / 2 + 1e-6
        relative = (got - reference).norm() / reference.norm()
        assert 1e-3 < relative < 0.3, relative     # random weights: ~0.1 of each layer's output, compounded

        def run(seed, model=model):
            gens = [torch.Generator().manual_seed(seed + i) for i in range(2)]
            with torch.no_grad():
                return torch.stack([t for t, _ in generate_tokens(model, [[1, 2, 3], [4, 5]], 20, gens,
                                                                  Sampling(temperature=1.0, top_k=20))], 1)

        assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))


def test_a_module_without_a_head_has_its_linears_quantized():
    block = _model().blocks[0]
    quantize_int4(block)
    layers = [m for m in block.modules() if isinstance(m, (torch.nn.Linear, Int4Linear))]
    assert len(layers) >= 3 and all(isinstance(m, Int4Linear) for m in layers)


def test_int8_fbgemm_and_int8pack_paths_hold_the_same_weights(monkeypatch):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    x = torch.randn(5, 96)
    fast = Int8Linear(linear)
    monkeypatch.setattr("genloom.nn.quantize._fbgemm_ready", lambda: False)
    plain = Int8Linear(linear)
    assert plain.packed is None
    if fast.packed is None:
        pytest.skip("this torch has no x86 quantized engine")
    qweight, _ = torch.ops.quantized.linear_unpack(fast.packed)
    assert torch.equal(qweight.int_repr(), plain.weight)             # the same int8 codes and scales
    assert torch.allclose(qweight.q_per_channel_scales().float(), plain.scale.float(), rtol=1e-2)
    reference = linear(x)
    for layer in (fast, plain):          # fbgemm rounds the activations too: a little further from fp32
        assert (layer(x) - reference).norm() / reference.norm() < 0.02
    assert (fast(x) - plain(x)).norm() / reference.norm() < 0.02


# ---- the options: genloom.load, genloom generate text, genloom eval, genloom serve ----------------

@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory):
    from conftest import tiny

    from genloom import api

    out = tmp_path_factory.mktemp("quant") / "run"
    api.train("shakespeare-char", out=out, overrides=tiny(corpus, "train.max_steps=10"))
    return out


def test_load_quantize_int4_and_a_bad_value(checkpoint):
    import genloom

    handle = genloom.load(checkpoint, device="cpu", quantize="int4")
    assert handle.model.quantized == "int4" and isinstance(handle.model.head, Int4Linear)
    assert handle.model.head.group == 32                              # d_model 32: the group that divides it
    a = handle.generate("MAC", max_new_tokens=30, seed=5, temperature=1.0)
    assert a == handle.generate("MAC", max_new_tokens=30, seed=5, temperature=1.0) and len(a[0]) > 0
    with pytest.raises(GenloomError, match="int8.*int4"):
        genloom.load(checkpoint, device="cpu", quantize="int3")


def test_serve_loads_text_models_quantized(checkpoint):
    from genloom.serve import load_models

    models = load_models([f"shakes={checkpoint}"], "cpu", quantize="int4")
    assert models["shakes"].model.quantized == "int4"
    with pytest.raises(GenloomError, match="int8.*int4"):
        load_models([f"shakes={checkpoint}"], "cpu", quantize="fp4")


def test_cli_generate_quantize_int4_end_to_end(checkpoint):
    from conftest import run_cli

    import genloom

    done = run_cli("generate", "text", "--checkpoint", str(checkpoint), "--prompt", "MAC", "--max-new-tokens", "25",
                   "--seed", "1", "--temperature", "0.8", "--quantize", "int4", "--device", "cpu", timeout=120)
    assert done.returncode == 0, done.stderr
    handle = genloom.load(checkpoint, device="cpu", quantize="int4")
    (expected,) = handle.generate("MAC", max_new_tokens=25, seed=1, temperature=0.8)
    assert done.stdout == "MAC" + expected + "\n"                     # the CLI decodes with the int4 model


def test_cli_eval_quantize_int4(checkpoint):
    from conftest import run_cli

    scored = run_cli("eval", "--checkpoint", str(checkpoint), "--quantize", "int4", "--device", "cpu", timeout=120)
    assert scored.returncode == 0, scored.stderr
    assert "perplexity" in scored.stdout


def test_cli_rejects_an_unknown_quantize_value_in_one_line(checkpoint):
    from conftest import run_cli

    done = run_cli("generate", "text", "--checkpoint", str(checkpoint), "--quantize", "int3", timeout=120)
    assert done.returncode != 0
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "int8" in lines[0] and "int4" in lines[0] and "Traceback" not in done.stderr, \
        done.stderr
