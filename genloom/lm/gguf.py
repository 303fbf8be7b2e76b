"""GGUF files (llama.cpp's format): genloom's transformer written as llama.cpp's `gpt2` or `llama`
architecture, with its tokenizer, and read back.

Export (`export_gguf`): every weight matrix in the chosen type (`f32`, `f16`, `q8_0`, `q4_0`); norms,
biases and GPT-2's position table stay f32, as llama.cpp's own converter keeps them; a q8_0/q4_0 matrix
whose rows are not a multiple of 32 values (the block size) falls back to f16. The file is written beside
`out` under a temporary name and renamed into place, so a failed export leaves nothing behind.

The rotary layout: genloom (like Hugging Face) rotates the two halves of each head, (x_i, x_{i+d/2});
llama.cpp's `llama` architecture rotates neighbouring pairs, (x_{2i}, x_{2i+1}). So the rows of each
query and key head are reordered on export, [0, d/2, 1, d/2+1, ...] (`interleave_heads`, the "permute" of
llama.cpp's converter), and put back on import (`deinterleave_heads`). The attention scores are unchanged:
q and k are permuted alike, and v and the output projection are left as they are.

Tokenizers: a byte-level BPE is written as llama.cpp's `gpt2` tokenizer (its vocabulary, merges and the
GPT-2 pre-tokenizer); genloom's character tokenizer too, each character a token, with merges only to
assemble characters of more than one UTF-8 byte. `tokenizer.huggingface.json` holds the exact
`tokenizer.json`, which import uses where present.

Import (`read_gguf`): the header is walked first with every length checked against the file's size (a
damaged or hostile file is refused in one line before anything is allocated), then read with
`gguf.GGUFReader` and dequantised to float32.

Needs the `gguf` package (`pip install gguf`, or the `bench` / `dev` extras).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import CheckpointError, ConfigError, GenloomError
from .tokenizers import END_OF_TEXT, TextTokenizer
from .transformer import TransformerConfig

__all__ = ["ARCHITECTURES", "QUANTS", "GGUFModel", "check_quant", "deinterleave_heads", "export_gguf",
           "gguf_arch", "interleave_heads", "read_gguf"]

QUANTS = ("f32", "f16", "q8_0", "q4_0")
ARCHITECTURES = ("gpt2", "llama")
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}           # llama.cpp's general.file_type
# What import dequantises (the types gguf.quants reads and llama.cpp's quantizer commonly writes).
READABLE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                  "Q6_K")
NO_MERGE = "<genloom:no-merges>"
TOKENIZER_PRE = "gpt-2"      # llama.cpp's name for GPT-2's pre-tokenizer regex (what tokenizers' ByteLevel uses)


def _gguf():
    try:
        import gguf
    except ImportError:
        raise GenloomError("GGUF files need the gguf package: pip install gguf (or pip install "
                           "'genloom[bench]')") from None
    return gguf


# -- which llama.cpp architecture ------------------------------------------------------------------------------

# The settings the two architectures express; any other TransformerConfig field must keep its default.
_EXPRESSED = {"kind", "vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "d_model", "mlp", "mlp_hidden",
              "norm", "norm_eps", "position", "rope_theta", "bias", "tie_embeddings", "qk_norm", "dropout", "init_std",
              "family"}


def gguf_arch(cfg: TransformerConfig) -> str:
    """'gpt2' or 'llama': the llama.cpp architecture that computes exactly what this config computes."""
    same_as_default = {"head_size": cfg.d_model // cfg.n_head, "rotary_dim": cfg.head_dim}   # 0 means these
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in _EXPRESSED or value == f.default or value == same_as_default.get(f.name):
            continue
        raise ConfigError(f"model.{f.name}={value!r}: llama.cpp's plain gpt2 and llama architectures have no such "
                          f"setting, so GGUF export supports model.{f.name}={f.default!r} only")
    if cfg.qk_norm:
        raise ConfigError("model.qk_norm=true: llama.cpp's gpt2 and llama architectures do not normalise queries "
                          "and keys, so GGUF export supports qk_norm=false only")
    if cfg.mlp not in ("gelu_tanh", "swiglu"):
        why = " (exact, erf): llama.cpp's gpt2 architecture uses the tanh approximation" if cfg.mlp == "gelu" else \
            ": llama.cpp's gpt2 architecture uses GELU (tanh) and its llama architecture SwiGLU"
        raise ConfigError(f"model.mlp={cfg.mlp}{why}, so GGUF export supports mlp=gelu_tanh (GPT-2 style) or swiglu "
                          "(Llama style)")
    if (cfg.position, cfg.norm, cfg.mlp) == ("learned", "layernorm", "gelu_tanh"):
        return "gpt2"
    if (cfg.position, cfg.norm, cfg.mlp) == ("rope", "rmsnorm", "swiglu"):
        return "llama"
    raise ConfigError(f"model.position={cfg.position}, norm={cfg.norm}, mlp={cfg.mlp} mixes GPT-2 and Llama "
                      "choices; GGUF export supports GPT-2 style (position=learned, norm=layernorm, mlp=gelu_tanh) "
                      "and Llama style (position=rope, norm=rmsnorm, mlp=swiglu)")


def check_quant(quant: str) -> str:
    if quant not in QUANTS:
        raise ConfigError(f"--quant {quant!r} is not supported; GGUF export writes {', '.join(QUANTS)}")
    return quant


# -- the rotary layout -----------------------------------------------------------------------------------------

def interleave_heads(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from the rotate-half order (genloom, HF) to llama.cpp's neighbouring pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def deinterleave_heads(w: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of `interleave_heads`."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# -- weights -----------------------------------------------------------------------------------------------------

def _weights_to_gguf(cfg: TransformerConfig, arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """genloom's state dict as GGUF tensor names (PyTorch's (out, in) layout is ggml's (in, out): no transposes)."""
    def get(name: str) -> torch.Tensor:
        if name not in state:
            raise CheckpointError(f"the model has no weight {name!r} (a plain genloom transformer was expected)")
        return state[name].detach().float().cpu()

    def bias(name: str, size: int) -> torch.Tensor:
        # llama.cpp's gpt2 architecture requires every bias: a model without biases gets zeros (the same function).
        return get(name) if name in state else torch.zeros(size)

    out = {"token_embd.weight": get("embed.weight")}
    d, hidden = cfg.d_model, get("blocks.0.mlp.down.weight").shape[1]
    q_size, kv_size = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    if arch == "gpt2":
        out["position_embd.weight"] = get("pos_embed.weight")
    out["output_norm.weight"] = get("final_norm.weight")
    if arch == "gpt2":
        out["output_norm.bias"] = bias("final_norm.bias", d)
    if not cfg.tie_embeddings:
        out["output.weight"] = get("head.weight")
    for i in range(cfg.n_layer):
        b, g = f"blocks.{i}.", f"blk.{i}."
        out[g + "attn_norm.weight"] = get(b + "attn_norm.weight")
        out[g + "ffn_norm.weight"] = get(b + "mlp_norm.weight")
        if arch == "gpt2":
            out[g + "attn_norm.bias"] = bias(b + "attn_norm.bias", d)
            out[g + "ffn_norm.bias"] = bias(b + "mlp_norm.bias", d)
            for ours, theirs, size in (("attn.qkv", "attn_qkv", q_size + 2 * kv_size), ("attn.proj", "attn_output", d),
                                       ("mlp.up", "ffn_up", hidden), ("mlp.down", "ffn_down", d)):
                out[g + theirs + ".weight"] = get(b + ours + ".weight")
                out[g + theirs + ".bias"] = bias(b + ours + ".bias", size)
            continue
        for kind in ("weight", "bias") if cfg.bias else ("weight",):   # biases map exactly as their weights
            q, k, v = get(f"{b}attn.qkv.{kind}").split([q_size, kv_size, kv_size])
            out[f"{g}attn_q.{kind}"] = interleave_heads(q, cfg.n_head)
            out[f"{g}attn_k.{kind}"] = interleave_heads(k, cfg.kv_heads)
            out[f"{g}attn_v.{kind}"] = v
            out[f"{g}attn_output.{kind}"] = get(f"{b}attn.proj.{kind}")
            out[f"{g}ffn_gate.{kind}"], out[f"{g}ffn_up.{kind}"] = get(f"{b}mlp.up.{kind}").chunk(2)
            out[f"{g}ffn_down.{kind}"] = get(f"{b}mlp.down.{kind}")
    return {name: t.contiguous() for name, t in out.items()}


def _stored_type(name: str, array: np.ndarray, quant: str) -> str:
    """The GGUF type a tensor is written in: llama.cpp's converter's rules."""
    if array.ndim <= 1 or name.endswith(("_norm.weight", ".bias")) or name == "position_embd.weight":
        return "F32"
    if quant in ("q8_0", "q4_0") and array.shape[-1] % 32:
        return "F16"             # the row is not a whole number of 32-value blocks
    return quant.upper()


# -- tokenizers --------------------------------------------------------------------------------------------------

def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _as_text_tokenizer(tokenizer: Any) -> TextTokenizer:
    if isinstance(tokenizer, TextTokenizer):
        return tokenizer
    if isinstance(tokenizer, (str, Path)):
        return TextTokenizer.load(Path(tokenizer))
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        return TextTokenizer(tokenizer)
    raise TypeError(f"tokenizer: expected a TextTokenizer, a tokenizers.Tokenizer or a tokenizer.json path, "
                    f"not {type(tokenizer).__name__}")


def _is_gpt2_byte_level(data: dict) -> bool:
    """GPT-2's byte-level BPE exactly: no normalizer, the ByteLevel pre-tokenizer with GPT-2's regex and no added
    prefix space (what llama.cpp's `gpt-2` pre-tokenizer does), the ByteLevel decoder."""
    pre, decoder = data.get("pre_tokenizer") or {}, data.get("decoder") or {}
    return (data.get("normalizer") is None and pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space")
            and pre.get("use_regex", True) and decoder.get("type") == "ByteLevel")


def _tokenizer_metadata(tokenizer: TextTokenizer, vocab_size: int) -> dict[str, Any]:
    """tokenizer.ggml.* for llama.cpp's `gpt2` (BPE) tokenizer."""
    data = json.loads(tokenizer.hf.to_str())
    model = data["model"]
    kind, vocab = model.get("type"), model.get("vocab", {})
    if tokenizer.vocab_size > vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab_size}")
    tokens, types = [f"[PAD{i}]" for i in range(vocab_size)], [5] * vocab_size       # 5: UNUSED
    alphabet = _byte_alphabet()
    merges: list[str] = []
    unknown = None
    if kind == "BPE":
        if not _is_gpt2_byte_level(data):
            raise ConfigError("the tokenizer is a BPE but not GPT-2's byte-level one (normalizer, pre-tokenizer or "
                              "decoder differ); GGUF export supports GPT-2 style byte-level BPE and genloom's "
                              "character tokenizer")
        for piece, i in vocab.items():
            tokens[i], types[i] = piece, 1                                          # 1: NORMAL
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    elif kind == "WordLevel":
        unknown = model.get("unk_token")
        for piece, i in vocab.items():
            if piece == unknown:
                tokens[i], types[i] = piece, 2                                       # 2: UNKNOWN
                continue
            if len(piece) != 1:
                raise ConfigError(f"the word-level tokenizer has the piece {piece!r}; GGUF export supports genloom's "
                                  "character tokenizer (one character per token) and byte-level BPE")
            symbols = "".join(alphabet[b] for b in piece.encode("utf-8"))
            tokens[i], types[i] = symbols, 1
            # A character of several UTF-8 bytes is assembled from its bytes, one merge at a time.
            merges += [f"{symbols[:k]} {symbols[k]}" for k in range(1, len(symbols))]
        merges = list(dict.fromkeys(merges))
    else:
        raise ConfigError(f"the tokenizer's model is {kind!r}; GGUF export supports byte-level BPE and genloom's "
                          "character tokenizer")
    if not merges:
        # llama.cpp requires the merges key; this pair never forms (symbols start as single bytes).
        merges = [f"{NO_MERGE} {NO_MERGE}"]
    for added in data.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = 3 if added.get("special") else 4                   # CONTROL / USER_DEFINED
    meta: dict[str, Any] = {"model": "gpt2", "pre": TOKENIZER_PRE, "tokens": tokens, "types": types, "merges": merges,
                            "json": tokenizer.hf.to_str()}
    control = [i for i, t in enumerate(types) if t == 3]
    end = tokenizer.token_id(END_OF_TEXT)
    stop = end if end is not None else (control[0] if control else None)
    if unknown is not None:
        meta["unk"] = vocab[unknown]
        # <unk> is never produced, while llama.cpp's default end token (id 11) would be a character.
        stop = meta["unk"] if stop is None else stop
    if stop is not None:
        meta["eos"] = meta["bos"] = stop
    return meta


def _tokenizer_from_gguf(fields: dict[str, Any], path: Path) -> TextTokenizer:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if "tokenizer.huggingface.json" in fields:
        try:
            return TextTokenizer(Tokenizer.from_str(str(fields["tokenizer.huggingface.json"])))
        except Exception as e:  # tokenizers raises plain Exception for a malformed file
            raise CheckpointError(f"{path}: tokenizer.huggingface.json is not a valid tokenizer ({e})") from None
    model, pre = fields.get("tokenizer.ggml.model"), fields.get("tokenizer.ggml.pre")
    if model != "gpt2" or pre not in (TOKENIZER_PRE, None):
        raise CheckpointError(f"{path}: tokenizer {model!r} (pre-tokenizer {pre!r}) is not supported; import reads "
                              "byte-level BPE tokenizers (tokenizer.ggml.model 'gpt2', pre-tokenizer 'gpt-2') or a "
                              "file that carries tokenizer.huggingface.json")
    tokens, types = fields.get("tokenizer.ggml.tokens"), fields.get("tokenizer.ggml.token_type")
    merges = fields.get("tokenizer.ggml.merges") or []
    if types is None and isinstance(tokens, list):
        types = [1] * len(tokens)
    if not (isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)
            and isinstance(types, list) and all(isinstance(k, int) for k in types) and len(types) == len(tokens)
            and isinstance(merges, list) and all(isinstance(m, str) for m in merges)):
        raise CheckpointError(f"{path}: tokenizer.ggml.tokens, token_type and merges are not lists of one string, "
                              "one type and one merge per entry (damaged)")
    vocab = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind != 5}          # 5: UNUSED
    # llama.cpp splits a merge at the first space after its first character.
    pairs = [(m[:cut], m[cut + 1:]) for m in merges if (cut := m.find(" ", 1)) > 0]
    pairs = [(a, b) for a, b in pairs if a in vocab and b in vocab and a + b in vocab]
    tok = Tokenizer(models.BPE(vocab, pairs))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Control and user-defined tokens keep their ids: the vocabulary already holds them.
    tok.add_special_tokens([AddedToken(t, special=True) for t, kind in zip(tokens, types) if kind == 3])
    tok.add_tokens([t for t, kind in zip(tokens, types) if kind == 4])
    return TextTokenizer(tok)


# -- export ------------------------------------------------------------------------------------------------------

def export_gguf(model: torch.nn.Module, tokenizer: Any, out: str | Path, quant: str = "f16", *,
                name: str = "genloom") -> Path:
    """Write a genloom `Transformer` and its tokenizer as a GGUF file that llama.cpp runs.

    model: the `Transformer` (its `.config` says GPT-2 or Llama style; weights are read on the CPU as float32);
    tokenizer: a `TextTokenizer`, a `tokenizers.Tokenizer` or the path of a `tokenizer.json`;
    out: the file to write (refused when it exists); quant: one of `QUANTS`. Returns `out`.
    """
    gguf = _gguf()
    check_quant(quant)
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, TransformerConfig):
        raise TypeError(f"model: expected genloom's Transformer (a handle's .model), not {type(model).__name__}")
    arch = gguf_arch(cfg)
    out = Path(out)
    if out.exists():
        raise CheckpointError(f"{out} already exists; choose another --out")
    text_tokenizer = _as_text_tokenizer(tokenizer)
    vocab = _tokenizer_metadata(text_tokenizer, cfg.vocab_size)
    weights = _weights_to_gguf(cfg, arch, model.state_dict())
    if not out.parent.is_dir():
        raise CheckpointError(f"{out.parent} is not a folder; --out names the GGUF file to write")
    temp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(temp, arch)
    try:
        hidden = weights["blk.0.ffn_down.weight"].shape[1]
        writer.add_name(name)
        writer.add_file_type(FILE_TYPES[quant])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_context_length(cfg.block_size)
        writer.add_embedding_length(cfg.d_model)
        writer.add_block_count(cfg.n_layer)
        writer.add_feed_forward_length(hidden)
        writer.add_head_count(cfg.n_head)
        writer.add_head_count_kv(cfg.kv_heads)
        if arch == "gpt2":
            writer.add_layer_norm_eps(cfg.norm_eps)
        else:
            writer.add_layer_norm_rms_eps(cfg.norm_eps)
            writer.add_rope_dimension_count(cfg.head_dim)
            writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_tokenizer_model(vocab["model"])
        writer.add_tokenizer_pre(vocab["pre"])
        writer.add_token_list(vocab["tokens"])
        writer.add_token_types(vocab["types"])
        writer.add_token_merges(vocab["merges"])
        for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                         ("unk", writer.add_unk_token_id)):
            if key in vocab:
                add(vocab[key])
        writer.add_add_bos_token(False)     # genloom prompts start with their own first token
        writer.add_add_eos_token(False)
        writer.add_string(gguf.Keys.Tokenizer.HF_JSON, vocab["json"])
        for tensor_name, tensor in weights.items():
            array = tensor.numpy()
            kind = _stored_type(tensor_name, array, quant)
            qtype = gguf.GGMLQuantizationType[kind]
            data = gguf.quants.quantize(array, qtype)
            writer.add_tensor(tensor_name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temp, out)
    finally:
        writer.close()
        temp.unlink(missing_ok=True)
    return out


# -- import ------------------------------------------------------------------------------------------------------

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MAX_ENTRIES = 1 << 16      # metadata keys, tensors: far beyond any real model (a few thousand tensors)
_MAX_ITEMS = 1 << 21        # items of one array: vocabularies and merges have up to a few hundred thousand
_MAX_NAME = 1 << 16


class _Header:
    """A bounded walk over a GGUF header: every length is checked against what is left of the file."""

    def __init__(self, path: Path):
        self.path, self.size = path, path.stat().st_size
        self.file = open(path, "rb")

    def take(self, n: int, keep: bool = True) -> bytes:
        if n < 0 or self.file.tell() + n > self.size:
            raise CheckpointError(f"{self.path}: the GGUF file ends in its header (truncated or damaged)")
        if keep:
            return self.file.read(n)
        self.file.seek(n, os.SEEK_CUR)
        return b""

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def count(self, what: str, limit: int) -> int:
        n = self.u64()
        if n > limit:
            raise CheckpointError(f"{self.path}: {n} {what} (damaged or not a model file)")
        return n

    def string(self, limit: int | None = None) -> bytes:
        n = self.u64()
        if limit is not None and n > limit:
            raise CheckpointError(f"{self.path}: a {n}-byte name in the header (damaged)")
        return self.take(n)

    def skip_value(self, kind: int, nested: bool = False) -> Any:
        if kind in _SCALAR_SIZES:
            return self.take(_SCALAR_SIZES[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY and not nested:
            item, n = self.u32(), self.count("array items", _MAX_ITEMS)
            if item in _SCALAR_SIZES:
                return self.take(n * _SCALAR_SIZES[item], keep=False)
            for _ in range(n):
                self.skip_value(item, nested=True)
            return None
        raise CheckpointError(f"{self.path}: metadata value type {kind} is not a GGUF type (damaged)")


def _check_layout(path: Path) -> None:
    """Refuse a file that is not a complete little-endian GGUF of types import reads, before reading it."""
    gguf = _gguf()
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    header = _Header(path)
    try:
        if header.file.read(4) != b"GGUF":
            raise CheckpointError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
        version = header.u32()
        if version not in (2, 3):
            raise CheckpointError(f"{path}: GGUF version {version} is not supported (2 and 3 are; a big-endian file "
                                  "is not)")
        tensors, keys = header.count("tensors", _MAX_ENTRIES), header.count("metadata keys", _MAX_ENTRIES)
        alignment = 32
        for _ in range(keys):
            key = header.string(_MAX_NAME)
            kind = header.u32()
            value = header.skip_value(kind)
            if key == b"general.alignment" and kind == 4:
                alignment = struct.unpack("<I", value)[0]
        if alignment <= 0 or alignment & (alignment - 1):
            raise CheckpointError(f"{path}: general.alignment {alignment} is not a power of two (damaged)")
        infos = []
        for _ in range(tensors):
            name = header.string(_MAX_NAME).decode("utf-8", "replace")
            n_dims = header.u32()
            if not 1 <= n_dims <= 4:
                raise CheckpointError(f"{path}: tensor {name!r} has {n_dims} dimensions (damaged)")
            dims = [header.u64() for _ in range(n_dims)]
            kind, offset = header.u32(), header.u64()
            try:
                type_name = gguf.GGMLQuantizationType(kind).name
            except ValueError:
                type_name = f"type {kind}"
            if type_name not in READABLE_TYPES:
                raise CheckpointError(f"{path}: tensor {name!r} is stored as {type_name}, which import does not read; "
                                      f"supported: {', '.join(READABLE_TYPES)}")
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
            if dims[0] % block or any(d > 1 << 40 for d in dims):
                raise CheckpointError(f"{path}: tensor {name!r} has the shape {dims} (damaged)")
            infos.append((name, offset, math.prod(dims) // block * type_size))
        start = header.file.tell()
        start += -start % alignment
        for name, offset, nbytes in infos:
            if start + offset + nbytes > header.size:
                raise CheckpointError(f"{path}: tensor {name!r} runs past the end of the file (truncated)")
    finally:
        header.file.close()


@dataclass
class GGUFModel:
    """A GGUF file read back: genloom's config and float32 state dict, the tokenizer, and what was stored."""

    arch: str
    config: TransformerConfig
    state: dict[str, torch.Tensor]
    tokenizer: TextTokenizer
    tensor_types: dict[str, str] = field(default_factory=dict)     # GGUF tensor name -> stored type (F16, Q4_0, ...)
    metadata: dict[str, Any] = field(default_factory=dict)         # every key, but the token lists


def _fields(reader: Any) -> dict[str, Any]:
    out = {}
    for key, value in reader.fields.items():
        if not key.startswith("GGUF."):
            out[key] = value.contents()
    return out


def _config_from_gguf(arch: str, meta: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                      path: Path) -> TransformerConfig:
    """genloom's config from the metadata (`shapes`: tensor name -> ggml shape, (in, out))."""
    def get(key: str, kind: type = int, default: Any = ...) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is ...:
            raise CheckpointError(f"{path}: metadata {arch}.{key} is missing")
        if isinstance(value, list):
            raise CheckpointError(f"{path}: {arch}.{key} differs between layers, which genloom's transformer "
                                  "does not support")
        if isinstance(value, (str, bytes, bool)) or not isinstance(value, (int, float)):
            raise CheckpointError(f"{path}: metadata {arch}.{key} = {value!r} is not a number")
        return kind(value)

    for key in ("expert_count", "rope.scaling.type", "attention.sliding_window"):
        value = meta.get(f"{arch}.{key}")
        if value not in (None, 0, "none"):
            raise CheckpointError(f"{path}: {arch}.{key} = {value!r} is not supported (plain {arch} models only)")
    if len(shapes.get("token_embd.weight", ())) != 2:
        raise CheckpointError(f"{path}: tensor 'token_embd.weight' is missing (or not a matrix)")
    d, n_head = get("embedding_length"), get("attention.head_count")
    if n_head <= 0 or d % n_head:
        raise CheckpointError(f"{path}: embedding_length {d} is not a multiple of head_count {n_head}")
    head_dim = d // n_head
    sizes = ("attention.key_length", "attention.value_length", "rope.dimension_count")
    for key in sizes if arch == "llama" else sizes[:2]:
        if get(key, default=head_dim) != head_dim:
            raise CheckpointError(f"{path}: {arch}.{key} = {get(key)} differs from the head size embedding_length / "
                                  f"head_count = {head_dim}, which genloom's {arch} import does not support")
    common = dict(vocab_size=shapes["token_embd.weight"][1], block_size=get("context_length"),
                  n_layer=get("block_count"), n_head=n_head, n_kv_head=get("attention.head_count_kv", default=n_head),
                  d_model=d, mlp_hidden=get("feed_forward_length"), tie_embeddings="output.weight" not in shapes,
                  qk_norm=False)
    try:
        if arch == "gpt2":
            return TransformerConfig(**common, mlp="gelu_tanh", norm="layernorm", position="learned", bias=True,
                                     norm_eps=get("attention.layer_norm_epsilon", float))
        return TransformerConfig(**common, mlp="swiglu", norm="rmsnorm", position="rope",
                                 norm_eps=get("attention.layer_norm_rms_epsilon", float),
                                 rope_theta=get("rope.freq_base", float, 10000.0),
                                 bias=any(name.endswith(".bias") for name in shapes))
    except ConfigError as e:
        raise CheckpointError(f"{path}: the model it describes is not valid: {e}") from None


def _expected_shapes(cfg: TransformerConfig, arch: str, hidden: int) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> shape in numpy order (out, in), for every tensor the file may hold."""
    d, q, kv, v = cfg.d_model, cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (v, d), "output_norm.weight": (d,)}
    if not cfg.tie_embeddings:
        shapes["output.weight"] = (v, d)
    if arch == "gpt2":
        shapes |= {"position_embd.weight": (cfg.block_size, d), "output_norm.bias": (d,)}
    for i in range(cfg.n_layer):
        g = f"blk.{i}."
        shapes |= {g + "attn_norm.weight": (d,), g + "ffn_norm.weight": (d,)}
        if arch == "gpt2":
            parts = {"attn_qkv": (q + 2 * kv, d), "attn_output": (d, q), "ffn_up": (hidden, d), "ffn_down": (d, hidden)}
            shapes |= {g + "attn_norm.bias": (d,), g + "ffn_norm.bias": (d,)}
        else:
            parts = {"attn_q": (q, d), "attn_k": (kv, d), "attn_v": (kv, d), "attn_output": (d, q),
                     "ffn_gate": (hidden, d), "ffn_up": (hidden, d), "ffn_down": (d, hidden)}
        for part, shape in parts.items():
            shapes[g + part + ".weight"] = shape
            if cfg.bias:
                shapes[g + part + ".bias"] = shape[:1]
    return shapes


def _weights_from_gguf(cfg: TransformerConfig, arch: str, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    zeros = torch.zeros
    out = {"embed.weight": t["token_embd.weight"], "final_norm.weight": t["output_norm.weight"]}
    if arch == "gpt2":
        out["pos_embed.weight"] = t["position_embd.weight"]
        out["final_norm.bias"] = t["output_norm.bias"]
    if not cfg.tie_embeddings:
        out["head.weight"] = t["output.weight"]
    for i in range(cfg.n_layer):
        b, g = f"blocks.{i}.", f"blk.{i}."
        out[b + "attn_norm.weight"], out[b + "mlp_norm.weight"] = t[g + "attn_norm.weight"], t[g + "ffn_norm.weight"]
        if arch == "gpt2":
            out[b + "attn_norm.bias"], out[b + "mlp_norm.bias"] = t[g + "attn_norm.bias"], t[g + "ffn_norm.bias"]
            for ours, theirs in (("attn.qkv", "attn_qkv"), ("attn.proj", "attn_output"), ("mlp.up", "ffn_up"),
                                 ("mlp.down", "ffn_down")):
                out[b + ours + ".weight"], out[b + ours + ".bias"] = t[g + theirs + ".weight"], t[g + theirs + ".bias"]
            continue
        out[b + "attn.qkv.weight"] = torch.cat([deinterleave_heads(t[g + "attn_q.weight"], cfg.n_head),
                                                deinterleave_heads(t[g + "attn_k.weight"], cfg.kv_heads),
                                                t[g + "attn_v.weight"]])
        out[b + "attn.proj.weight"] = t[g + "attn_output.weight"]
        out[b + "mlp.up.weight"] = torch.cat([t[g + "ffn_gate.weight"], t[g + "ffn_up.weight"]])
        out[b + "mlp.down.weight"] = t[g + "ffn_down.weight"]
        if cfg.bias:     # a file with some biases: the missing ones are zeros
            q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
            hidden = out[b + "mlp.down.weight"].shape[1]
            bias = {part: t.get(g + part + ".bias", zeros(size)) for part, size in (
                ("attn_q", q), ("attn_k", kv), ("attn_v", kv), ("attn_output", cfg.d_model), ("ffn_gate", hidden),
                ("ffn_up", hidden), ("ffn_down", cfg.d_model))}
            out[b + "attn.qkv.bias"] = torch.cat([deinterleave_heads(bias["attn_q"], cfg.n_head),
                                                  deinterleave_heads(bias["attn_k"], cfg.kv_heads), bias["attn_v"]])
            out[b + "attn.proj.bias"] = bias["attn_output"]
            out[b + "mlp.up.bias"] = torch.cat([bias["ffn_gate"], bias["ffn_up"]])
            out[b + "mlp.down.bias"] = bias["ffn_down"]
    return {name: tensor.contiguous() for name, tensor in out.items()}


def read_gguf(path: str | Path) -> GGUFModel:
    """Read a GGUF file of llama.cpp's `gpt2` or `llama` architecture as genloom's config, float32 state dict and
    tokenizer. Anything else (another architecture, tensor type or tokenizer; a damaged file) is one
    `CheckpointError` naming what is supported."""
    gguf = _gguf()
    path = Path(path)
    _check_layout(path)
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, KeyError, IndexError, TypeError, OverflowError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    try:
        meta = _fields(reader)
    except (ValueError, UnicodeDecodeError, IndexError) as e:
        raise CheckpointError(f"{path}: unreadable metadata ({type(e).__name__}: {e})") from None
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported; genloom imports "
                              f"{' and '.join(ARCHITECTURES)}")
    stored = {t.name: t for t in reader.tensors}
    shapes = {name: tuple(int(s) for s in t.shape) for name, t in stored.items()}     # ggml order (in, out)
    cfg = _config_from_gguf(arch, meta, shapes, path)
    hidden = cfg.mlp_hidden
    expected = _expected_shapes(cfg, arch, hidden)
    for name, t in stored.items():
        if name not in expected:
            raise CheckpointError(f"{path}: tensor {name!r} has no place in genloom's {arch} transformer (plain "
                                  f"{arch} models only)")
        shape = tuple(reversed(shapes[name]))
        if shape != expected[name]:
            raise CheckpointError(f"{path}: tensor {name!r} has the shape {list(shape)}, expected "
                                  f"{list(expected[name])}")
    missing = [name for name in expected if name not in stored and not (arch == "llama" and name.endswith(".bias"))]
    if missing:
        raise CheckpointError(f"{path}: tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
    tensors, types = {}, {}
    for name, t in stored.items():
        kind = gguf.GGMLQuantizationType(t.tensor_type)
        values = gguf.quants.dequantize(t.data, kind).astype(np.float32, copy=False)
        tensors[name] = torch.from_numpy(np.array(values.reshape(tuple(reversed(shapes[name]))), copy=True))
        types[name] = kind.name
    state = _weights_from_gguf(cfg, arch, tensors)
    bad = [name for name, v in state.items() if not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: tensor for {bad[0]!r} holds NaN or infinite values")
    tokenizer = _tokenizer_from_gguf(meta, path)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                              f"{cfg.vocab_size}")
    listed = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores",
              "tokenizer.huggingface.json"}
    return GGUFModel(arch, cfg, state, tokenizer, types, {k: v for k, v in meta.items() if k not in listed})
