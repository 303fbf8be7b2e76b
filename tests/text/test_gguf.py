"""GGUF export and import (genloom/lm/gguf.py, `genloom convert export --format gguf` / `convert import FILE`):
the metadata llama.cpp reads, weights back within the bounds each type allows, logits equal after an f32 round
trip, and, where llama-cpp-python is installed, llama.cpp itself computing the same logits and greedy tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import run_cli, tiny

from genloom import api, load
from genloom.core.errors import CheckpointError, ConfigError
from genloom.lm.tokenizers import TextTokenizer
from genloom.lm.transformer import Transformer, TransformerConfig
from genloom.nn.attention import RotaryEmbedding, apply_rotary

gguf = pytest.importorskip("gguf")
from genloom.lm.gguf import (  # after the skip: the module needs the gguf package to do anything
    deinterleave_heads,
    export_gguf,
    gguf_arch,
    interleave_heads,
    read_gguf,
)

STYLES = {
    "gpt2": dict(position="learned", norm="layernorm", mlp="gelu_tanh", bias=True, tie_embeddings=True),
    "llama": dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2,
                  rope_theta=500.0),
}
PROMPT = "MACBETH:\nSo foul and fair a day"
GPT2_RUN = ["model.position=learned", "model.norm=layernorm", "model.mlp=gelu_tanh", "model.bias=true",
            "model.tie_embeddings=true", "model.qk_norm=false", "data.tokenizer=bpe", "data.vocab_size=300"]
LLAMA_RUN = ["model.position=rope", "model.norm=rmsnorm", "model.mlp=swiglu", "model.bias=false", "model.qk_norm=false",
             "model.tie_embeddings=false", "model.n_kv_head=1"]


@pytest.fixture(scope="module")
def tokenizers(corpus):
    text = corpus.read_text(encoding="utf-8")
    return {"char": TextTokenizer.train_char(text + "é—"), "bpe": TextTokenizer.train_bpe([text], 320)}


def random_model(style: str, tokenizer: TextTokenizer, seed: int = 0, **overrides) -> Transformer:
    """A tiny model with large random weights (init_std 0.2): its next-token choices are far from ties, so
    two implementations that agree to ~1e-3 pick the same greedy tokens."""
    cfg = TransformerConfig(**{**dict(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, d_model=64,
                                      init_std=0.2), **STYLES[style], **overrides})
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:   # not the zeros / ones of a fresh model
                p.add_(torch.randn_like(p) * 0.1)
    return model


def logits(model: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens]))[0]


def reload(path) -> Transformer:
    back = read_gguf(path)
    model = Transformer(back.config).eval()
    model.load_state_dict(back.state)
    return model


def test_the_q_k_permutation_turns_rotate_half_into_llama_cpp_pairs():
    """genloom rotates (x_i, x_{i+d/2}); llama.cpp's llama architecture rotates (x_{2i}, x_{2i+1}). Rotating the
    permuted vector pairwise must equal permuting the rotated vector, for every head and position."""
    heads, d, positions = 3, 8, 5
    w = torch.randn(heads * d, 16)
    assert torch.equal(deinterleave_heads(interleave_heads(w, heads), heads), w)
    x = torch.randn(1, heads, positions, d)
    cos, sin = RotaryEmbedding(d, positions, 10000.0)(torch.arange(positions))
    ours = apply_rotary(x, cos, sin)                                                    # rotate-half
    to_pairs = lambda t: interleave_heads(t.transpose(1, 2).reshape(positions, heads * d).T, heads).T
    px = to_pairs(x).reshape(positions, heads, d // 2, 2)
    angle_cos, angle_sin = cos[:, None, : d // 2], sin[:, None, : d // 2]
    a, b = px[..., 0], px[..., 1]
    pairs = torch.stack([a * angle_cos - b * angle_sin, a * angle_sin + b * angle_cos], dim=-1)  # llama.cpp's NORM
    assert torch.allclose(pairs.reshape(positions, heads * d), to_pairs(ours), atol=1e-6)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0", "q4_0"])
def test_metadata_and_tensors_are_what_llama_cpp_reads(style, quant, tokenizers, tmp_path):
    tok = tokenizers["bpe"]
    model = random_model(style, tok)
    cfg = model.config
    path = export_gguf(model, tok, tmp_path / "m.gguf", quant)
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items()}
    assert meta["general.architecture"] == style
    assert meta["general.file_type"] == {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}[quant]
    assert meta[f"{style}.context_length"] == cfg.block_size
    assert meta[f"{style}.embedding_length"] == cfg.d_model
    assert meta[f"{style}.block_count"] == cfg.n_layer
    assert meta[f"{style}.attention.head_count"] == cfg.n_head
    assert meta[f"{style}.attention.head_count_kv"] == cfg.kv_heads
    assert meta[f"{style}.feed_forward_length"] == model.blocks[0].mlp.down.in_features
    if style == "llama":
        assert meta["llama.rope.dimension_count"] == cfg.head_dim
        assert meta["llama.rope.freq_base"] == pytest.approx(cfg.rope_theta)
        assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.norm_eps)
    else:
        assert meta["gpt2.attention.layer_norm_epsilon"] == pytest.approx(cfg.norm_eps)
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert len(meta["tokenizer.ggml.tokens"]) == cfg.vocab_size
    assert meta["tokenizer.ggml.eos_token_id"] == tok.token_id("<|endoftext|>")
    assert meta["tokenizer.ggml.add_bos_token"] is False
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    names = set(types)
    if style == "gpt2":
        assert {"token_embd.weight", "position_embd.weight", "output_norm.bias", "blk.1.attn_qkv.bias"} <= names
        assert "output.weight" not in names                              # tied: llama.cpp reuses token_embd
    else:
        assert {"output.weight", "blk.1.attn_q.weight", "blk.1.attn_k.weight", "blk.1.ffn_gate.weight"} <= names
        assert not any(n.endswith(".bias") for n in names)
    stored = quant.upper()
    for name, kind in types.items():
        kept = name.endswith(("_norm.weight", ".bias")) or name == "position_embd.weight"
        assert kind == ("F32" if kept else stored), name
    by_name = {t.name: t for t in reader.tensors}
    q = by_name["blk.0.attn_q.weight" if style == "llama" else "blk.0.attn_qkv.weight"]
    assert list(q.shape) == [cfg.d_model, cfg.n_head * cfg.head_dim * (1 if style == "llama" else 3)]  # ggml (in, out)


def block_bounds(original: torch.Tensor, quant: str) -> torch.Tensor:
    """The largest error each weight may have, from its 32-value block's largest magnitude m.
    q8_0: q = round(w / d), d = m / 127, stored as fp16: |error| <= d/2 + 127 * (fp16 rounding of d, <= 2^-11 d),
    about 0.5625 d. q4_0: d = (the signed value of magnitude m) / -8, q in [-8, 7], so the value of opposite sign
    is clipped to 7|d|; |error| <= |d| (+ 8 * 2^-11 |d|)."""
    blocks = original.reshape(-1, 32).abs().amax(dim=1, keepdim=True)
    per_block = blocks / 127 * (0.5 + 127 * 2 ** -11) if quant == "q8_0" else blocks / 8 * (1 + 8 * 2 ** -11)
    return (per_block * 1.0001 + 1e-12).expand(-1, 32).reshape(original.shape)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_quantized_weights_come_back_within_their_block_bounds(style, quant, tokenizers, tmp_path):
    tok = tokenizers["bpe"]
    model = random_model(style, tok)
    back = read_gguf(export_gguf(model, tok, tmp_path / "m.gguf", quant))
    assert set(back.tensor_types.values()) == {"F32", quant.upper()}
    for name, original in model.state_dict().items():
        restored = back.state[name]
        if original.dim() == 1 or name == "pos_embed.weight":
            assert torch.equal(restored, original), name                 # kept in f32
            continue
        error = (restored - original).abs()
        bound = block_bounds(original, quant)
        assert (error <= bound).all(), f"{name}: {(error / bound).max():.3f} of the bound"
        assert error.max() > 0, name


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_f32_round_trip_is_exact_and_f16_close(style, kind, tokenizers, tmp_path):
    tok = tokenizers[kind]
    model = random_model(style, tok, bias=True) if style == "llama" else random_model(style, tok)
    tokens = tok.encode(PROMPT)
    exact = read_gguf(export_gguf(model, tok, tmp_path / "f32.gguf", "f32"))
    assert exact.config.tie_embeddings == model.config.tie_embeddings and exact.config.bias == model.config.bias
    again = Transformer(exact.config).eval()
    again.load_state_dict(exact.state)
    assert torch.allclose(logits(again, tokens), logits(model, tokens), atol=1e-6, rtol=0)
    assert exact.tokenizer.encode(PROMPT + " é—") == tok.encode(PROMPT + " é—")
    assert exact.tokenizer.hf.to_str() == tok.hf.to_str()
    # f16 keeps 11 significant bits: each weight within 2^-11 of itself, the logits within a few times that of
    # their own size after two layers.
    half = logits(reload(export_gguf(model, tok, tmp_path / "f16.gguf", "f16")), tokens)
    ours = logits(model, tokens)
    assert (half - ours).abs().max() <= 8 * 2 ** -11 * ours.abs().max()


def test_a_file_without_the_tokenizer_json_gets_its_bpe_rebuilt(tokenizers, tmp_path, monkeypatch):
    """Files made by other tools carry only tokenizer.ggml.*: import rebuilds the byte-level BPE from them."""
    plain_add_string = gguf.GGUFWriter.add_string
    monkeypatch.setattr(gguf.GGUFWriter, "add_string", lambda self, key, value: None if key ==
                        "tokenizer.huggingface.json" else plain_add_string(self, key, value))
    tok = tokenizers["bpe"]
    back = read_gguf(export_gguf(random_model("gpt2", tok), tok, tmp_path / "m.gguf", "f16"))
    assert "tokenizer.huggingface.json" not in gguf.GGUFReader(tmp_path / "m.gguf").fields
    text = PROMPT + " <|endoftext|> naïve — ok"
    assert back.tokenizer.kind == "bpe" and back.tokenizer.vocab_size == tok.vocab_size
    assert back.tokenizer.encode(text) == tok.encode(text)
    assert back.tokenizer.decode(tok.encode(text)) == text


def kl_and_nll(reference: torch.Tensor, other: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    p = reference.log_softmax(-1)
    q = other.log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1).mean().item()
    nll = torch.nn.functional.cross_entropy(other, targets).item()
    return kl, nll


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """A trained GPT-2 style run with a byte-level BPE and a Llama style run with characters (30 steps)."""
    root = tmp_path_factory.mktemp("gguf-runs")
    out = {}
    for name, overrides in (("gpt2", GPT2_RUN), ("llama", LLAMA_RUN)):
        api.train("shakespeare-char", out=root / name, overrides=tiny(corpus, *overrides))
        out[name] = root / name
    return out


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_quantization_costs_little_and_q4_more_than_q8(style, runs, corpus, tmp_path):
    """Perplexity on held-out text: q8_0 within 0.5% of f32 and q4_0 within 3% (measured: 0.01% and 0.2-0.4%
    on these 30-step models), and q4_0's distribution further from f32's than q8_0's (KL divergence)."""
    ours = load(runs[style])
    text = corpus.read_text(encoding="utf-8")[-3000:]
    ids = ours.tokenizer.encode(text)[: ours.config.model.block_size * 4 + 1]
    block = ours.config.model.block_size
    windows = torch.tensor([ids[i:i + block + 1] for i in range(0, len(ids) - block, block)])
    inputs, targets = windows[:, :-1], windows[:, 1:].reshape(-1)
    with torch.no_grad():
        reference = ours.model(inputs).reshape(-1, ours.model.config.vocab_size)
    results = {}
    for quant in ("f32", "q8_0", "q4_0"):
        model = reload(export_gguf(ours.model, ours.tokenizer, tmp_path / f"{quant}.gguf", quant))
        with torch.no_grad():
            results[quant] = kl_and_nll(reference, model(inputs).reshape(reference.shape), targets)
    (kl32, nll32), (kl8, nll8), (kl4, nll4) = results["f32"], results["q8_0"], results["q4_0"]
    assert kl32 < 1e-9
    assert 0 < kl8 < kl4
    assert abs(math.exp(nll8 - nll32) - 1) < 0.005
    assert abs(math.exp(nll4 - nll32) - 1) < 0.03


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_cli_export_then_import_round_trip(style, runs, tmp_path):
    file = tmp_path / f"{style}.gguf"
    result = run_cli("convert", "export", "--checkpoint", str(runs[style]), "--format", "gguf", "--quant", "f32",
                     "--out", str(file))
    assert result.returncode == 0, result.stderr
    assert file.is_file() and [p.name for p in tmp_path.iterdir()] == [file.name]     # no temporary left over
    back = tmp_path / "back"
    result = run_cli("convert", "import", str(file), "--out", str(back))
    assert result.returncode == 0, result.stderr
    ours, again = load(runs[style]), load(back)
    assert again.tokenizer.kind == ours.tokenizer.kind
    tokens = ours.tokenizer.encode(PROMPT)
    assert torch.allclose(logits(again.model, tokens), logits(ours.model, tokens), atol=1e-6, rtol=0)
    assert again.generate("MAC", max_new_tokens=20, temperature=0) == ours.generate("MAC", max_new_tokens=20,
                                                                                       temperature=0)
    result = run_cli("convert", "export", "--checkpoint", str(runs[style]), "--format", "gguf", "--out", str(file))
    assert result.returncode == 2 and "already exists" in result.stderr
    result = run_cli("convert", "import", str(file), "--out", str(back))
    assert result.returncode == 2 and "already holds a model" in result.stderr


# -- llama.cpp itself --------------------------------------------------------------------------------------------

def llama_cpp_model(path, n_ctx: int):
    llama_cpp = pytest.importorskip("llama_cpp")
    # f32 keys and values in the cache: its default f16 cache would round them.
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=2, n_threads_batch=2, logits_all=True,
                           verbose=False, type_k=0, type_v=0, flash_attn=False)


def llama_cpp_greedy(llm, prompt: list[int], steps: int) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    out = list(prompt)
    for _ in range(steps):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return out


def genloom_greedy(model: Transformer, prompt: list[int], steps: int) -> list[int]:
    out = list(prompt)
    for _ in range(steps):
        out.append(int(logits(model, out)[-1].argmax()))
    return out


# llama.cpp's CPU GELU reads a float16 table (GGML_GELU_FP16), so GPT-2 logits agree to ~3e-3, Llama's to ~1e-5.
PARITY = {"gpt2": 1e-2, "llama": 1e-4}


@pytest.mark.parametrize("style,kind,extra", [("gpt2", "bpe", {}), ("gpt2", "char", {"bias": False}),
                                              ("llama", "char", {}), ("llama", "bpe", {"bias": True})],
                         ids=["gpt2-bpe", "gpt2-char-nobias", "llama-char", "llama-bpe-bias"])
def test_llama_cpp_computes_the_same_logits_and_greedy_tokens(style, kind, extra, tokenizers, tmp_path):
    pytest.importorskip("llama_cpp")
    tok = tokenizers[kind]
    model = random_model(style, tok, **extra)
    path = export_gguf(model, tok, tmp_path / "m.gguf", "f32")
    llm = llama_cpp_model(path, model.config.block_size)
    prompt = tok.encode(PROMPT)
    assert llm.tokenize(PROMPT.encode(), add_bos=False, special=False) == prompt       # the same tokenizer
    if kind == "char":
        assert llm.tokenize("fair é—".encode(), add_bos=False) == tok.encode("fair é—")  # multi-byte characters
    ours = genloom_greedy(model, prompt, 20)
    assert llama_cpp_greedy(llm, prompt, 20) == ours
    assert llm.detokenize(ours[len(prompt):]).decode("utf-8", "replace") == tok.decode(ours[len(prompt):])
    llm.reset()
    llm.eval(ours)
    diff = np.abs(llm.scores[: len(ours)] - logits(model, ours).numpy()).max()
    assert diff < PARITY[style], diff


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0"])
def test_llama_cpp_runs_the_quantized_files_as_genloom_reads_them(style, quant, tokenizers, tmp_path):
    """The same quantized file in llama.cpp and imported into genloom. llama.cpp also rounds the activations (to
    f16 for f16 matrices, to 8 bits for q8_0/q4_0 ones), so the two agree only to about the size of 8-bit
    rounding; but for q4_0 they agree far better than either agrees with the f32 model, so llama.cpp decodes
    the very weights genloom does (a wrong block layout would leave them apart by the whole q4 error)."""
    pytest.importorskip("llama_cpp")
    tok = tokenizers["bpe"]
    model = random_model(style, tok)
    path = export_gguf(model, tok, tmp_path / "m.gguf", quant)
    tokens = tok.encode(PROMPT)
    ours, exact = logits(reload(path), tokens).numpy(), logits(model, tokens).numpy()
    llm = llama_cpp_model(path, 64)
    llm.eval(tokens)
    theirs = llm.scores[: len(tokens)]
    apart = np.abs(theirs - ours).max()
    assert apart < 0.1 * np.abs(ours).max()
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= 0.9
    if quant == "q4_0":
        assert apart < 0.25 * np.abs(ours - exact).max()


# -- refusals ----------------------------------------------------------------------------------------------------

def test_unknown_format_and_quant_are_one_line(runs, tmp_path):
    result = run_cli("convert", "export", "--checkpoint", str(runs["gpt2"]), "--format", "onnx", "--out",
                     str(tmp_path / "x"))
    assert result.returncode == 2 and "--format 'onnx' is not supported" in result.stderr
    assert "hf, gguf" in result.stderr
    result = run_cli("convert", "export", "--checkpoint", str(runs["gpt2"]), "--format", "gguf", "--quant", "q5_k",
                     "--out", str(tmp_path / "x.gguf"))
    assert result.returncode == 2 and "--quant 'q5_k'" in result.stderr and "f32, f16, q8_0, q4_0" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("overrides,message", [
    ({"qk_norm": True}, "qk_norm=true"),
    ({"mlp": "relu2"}, "mlp=relu2"),
    ({"mlp": "gelu"}, "tanh approximation"),
    ({"norm": "rmsnorm"}, "mixes GPT-2 and Llama"),
])
def test_families_llama_cpp_cannot_express_are_refused(overrides, message, tokenizers, tmp_path):
    model = random_model("gpt2", tokenizers["char"], **overrides)
    with pytest.raises(ConfigError, match=message):
        gguf_arch(model.config)
    with pytest.raises(ConfigError, match=message):
        export_gguf(model, tokenizers["char"], tmp_path / "m.gguf", "f16")
    assert not list(tmp_path.iterdir())


def test_a_failed_export_leaves_nothing_behind(tokenizers, tmp_path, monkeypatch):
    def broken(data, qtype):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.quants, "quantize", broken)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(random_model("llama", tokenizers["char"]), tokenizers["char"], tmp_path / "m.gguf", "q8_0")
    assert not list(tmp_path.iterdir())


def write_gguf(path, arch: str, tensors: dict[str, np.ndarray], raw: dict | None = None) -> None:
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    for name, array in tensors.items():
        writer.add_tensor(name, array, raw_dtype=(raw or {}).get(name))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_import_refuses_other_architectures_types_and_damaged_files(tokenizers, tmp_path):
    write_gguf(tmp_path / "mamba.gguf", "mamba", {"token_embd.weight": np.zeros((8, 32), np.float32)})
    with pytest.raises(CheckpointError, match="architecture 'mamba' is not supported; genloom imports gpt2 and llama"):
        read_gguf(tmp_path / "mamba.gguf")
    write_gguf(tmp_path / "ints.gguf", "llama", {"token_embd.weight": np.zeros((8, 32), np.int32)})
    with pytest.raises(CheckpointError, match=r"stored as I32, which import does not read; supported: F32, F16"):
        read_gguf(tmp_path / "ints.gguf")
    iq = np.zeros((8, 66), np.uint8)                                 # 256 values of IQ2_XXS in 66 bytes per row
    write_gguf(tmp_path / "iq.gguf", "llama", {"token_embd.weight": iq},
               {"token_embd.weight": gguf.GGMLQuantizationType.IQ2_XXS})
    with pytest.raises(CheckpointError, match="stored as IQ2_XXS"):
        read_gguf(tmp_path / "iq.gguf")

    good = export_gguf(random_model("llama", tokenizers["char"]), tokenizers["char"], tmp_path / "good.gguf", "q4_0")
    data = good.read_bytes()
    type_at = data.index(b"token_embd.weight") + len(b"token_embd.weight") + 4 + 2 * 8    # n_dims, two dims
    assert int.from_bytes(data[type_at:type_at + 4], "little") == gguf.GGMLQuantizationType.Q4_0
    (tmp_path / "type99.gguf").write_bytes(data[:type_at] + (99).to_bytes(4, "little") + data[type_at + 4:])
    with pytest.raises(CheckpointError, match="stored as type 99, which import does not read"):
        read_gguf(tmp_path / "type99.gguf")
    in_header = data.index(b"tokenizer.ggml.tokens") + 100
    for cut, message in ((len(data) - 100, "runs past the end of the file"), (in_header, "ends in its header"),
                         (3, "not a GGUF file")):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=message):
            read_gguf(tmp_path / "cut.gguf")
    huge = data[:8] + (1 << 40).to_bytes(8, "little") + data[16:]                        # absurd tensor count
    (tmp_path / "huge.gguf").write_bytes(huge)
    with pytest.raises(CheckpointError, match="tensors"):
        read_gguf(tmp_path / "huge.gguf")


def test_cli_import_of_a_truncated_file_is_one_line(tokenizers, tmp_path):
    good = export_gguf(random_model("gpt2", tokenizers["bpe"]), tokenizers["bpe"], tmp_path / "good.gguf", "f16")
    (tmp_path / "cut.gguf").write_bytes(good.read_bytes()[:-1000])
    result = run_cli("convert", "import", str(tmp_path / "cut.gguf"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "(truncated)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
