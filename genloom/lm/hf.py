"""Weight and config mapping between genloom's transformer and Hugging Face causal language models.

Every supported architecture is one row of `FAMILIES`: which `model_type` it is, the transformer switches all
its models share (`fixed`), the other values it can hold (`accepts`, `switches`), what its per-layer norms
are called, and two small functions for the config keys that are its own. Everything else — the dimensions,
rotary positions and their scaling, sliding windows, the weight names — is read and written by the shared code
below, so a new family that reuses these pieces is one more row.

Only names and layouts change: GPT-2's `Conv1D` stores weights as (in, out), so they are transposed; separate
q/k/v and gate/up projections are concatenated into genloom's fused `qkv` and `up` matrices (Phi-3 stores them
fused already). Hugging Face's rotary models already use the "rotate half" layout that genloom uses, so no
permutation is needed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..core.errors import ConfigError
from .transformer import Transformer, TransformerConfig

__all__ = ["from_hf", "from_hf_deferred", "Deferred", "to_hf", "hf_style", "FAMILIES", "Family", "supported_model_types"]

Config = dict[str, Any]

# Fields every family holds as they are (dimensions, training-only settings, bookkeeping).
COMMON = frozenset({"kind", "vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "d_model", "mlp_hidden",
                    "norm_eps", "dropout", "init_std", "tie_embeddings", "family"})
ROPE = frozenset({"rope_theta", "rope_scaling", "rope_factor", "rope_original_context", "rope_low_freq_factor",
                  "rope_high_freq_factor", "rope_beta_fast", "rope_beta_slow", "rope_truncate",
                  "rope_attention_factor", "rope_short_factor", "rope_long_factor"})
ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope")
GATED = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "gelu_pytorch_tanh": "geglu_tanh"}
GATED_NAMES = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_pytorch_tanh"}
DEFAULTS = TransformerConfig()


@dataclass(frozen=True)
class Family:
    """One Hugging Face architecture as genloom's transformer with some switches set."""

    model_type: str
    architecture: str                       # the `architectures` entry written on export
    models: str                             # the published models it covers (docs and messages)
    fixed: Mapping[str, Any]                # switches every model of it has (set on import, needed on export)
    accepts: Mapping[str, tuple] = field(default_factory=dict)  # the values a field may take on export (besides
    #                                         `fixed`; import reads them from config.json)
    switches: frozenset[str] = frozenset()  # further TransformerConfig fields a model of it may set to anything
    norms: Mapping[str, str] = field(default_factory=dict)  # genloom norm -> its name in a Hugging Face layer
    fused: bool = False                     # one qkv_proj and one gate_up_proj (Phi-3)
    activation_key: str = "hidden_act"      # the config key naming the MLP's activation
    rope_aliases: Mapping[str, str] = field(default_factory=dict)  # rope types it reads as others
    read: Callable[[Config], Config] = lambda hf: {}                      # its own keys -> TransformerConfig fields
    write: Callable[[TransformerConfig], Config] = lambda cfg: {}         # TransformerConfig -> its own keys


# ---------------------------------------------------------------------------------------------------------
# Shared pieces of config.json
# ---------------------------------------------------------------------------------------------------------

def _rope_fields(hf: Config, params: Config, head_dim: int, aliases: Mapping[str, str] | None = None) -> Config:
    """TransformerConfig rotary fields from one rotary parameter dict (`rope_parameters`, transformers >= 5, or
    the older `rope_theta` + `rope_scaling`), computed as transformers' rope init functions do."""
    theta = params.get("rope_theta", hf.get("rope_theta")) or 10000.0
    kind = params.get("rope_type", params.get("type")) or "default"
    kind = (aliases or {}).get(kind, kind)
    out: Config = {"rope_theta": float(theta)}
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor")) or 1.0
    if partial != 1.0:
        out["rotary_dim"] = int(head_dim * partial)
    if kind == "default":
        return out
    if kind not in ROPE_TYPES:
        raise ConfigError(f"rope_type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    context = hf.get("max_position_embeddings", 2048)
    original = hf.get("original_max_position_embeddings") or params.get("original_max_position_embeddings") or context
    factor = params.get("factor")
    if factor is None:
        if kind in ("linear", "llama3"):
            raise ConfigError(f"rope_type {kind!r} needs a factor")
        factor = context / original
    out.update(rope_scaling=kind, rope_factor=float(factor))
    if kind != "linear":
        out["rope_original_context"] = int(original)
    if kind == "llama3":
        out.update(rope_low_freq_factor=float(params["low_freq_factor"]),
                   rope_high_freq_factor=float(params["high_freq_factor"]))
    elif kind == "yarn":
        attention = params.get("attention_factor")
        mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")
        if attention is None and mscale and mscale_all:
            def get(scale: float, m: float) -> float:
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
            attention = get(factor, mscale) / get(factor, mscale_all)
        out.update(rope_beta_fast=float(params.get("beta_fast") or 32),
                   rope_beta_slow=float(params.get("beta_slow") or 1), rope_truncate=bool(params.get("truncate", True)),
                   rope_attention_factor=float(attention or 0.0))
    elif kind == "longrope":
        out.update(rope_short_factor=tuple(map(float, params["short_factor"])),
                   rope_long_factor=tuple(map(float, params["long_factor"])),
                   rope_attention_factor=float(params.get("attention_factor") or 0.0))
    return out


def _rope_config(cfg: TransformerConfig) -> Config:
    """The rotary keys of config.json in the format both transformers 4 and 5 read (`rope_theta` and
    `rope_scaling`)."""
    out: Config = {"rope_theta": cfg.rope_theta}
    if cfg.rope_scaling == "none":
        out["rope_scaling"] = None
        return out
    scaling: Config = {"rope_type": cfg.rope_scaling, "factor": cfg.rope_factor}
    if cfg.rope_scaling != "linear":
        scaling["original_max_position_embeddings"] = cfg.rope_original_context
    if cfg.rope_scaling == "llama3":
        scaling.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor)
    elif cfg.rope_scaling == "yarn":
        scaling.update(beta_fast=cfg.rope_beta_fast, beta_slow=cfg.rope_beta_slow, truncate=cfg.rope_truncate)
    elif cfg.rope_scaling == "longrope":
        scaling.update(short_factor=list(cfg.rope_short_factor), long_factor=list(cfg.rope_long_factor))
    if cfg.rope_attention_factor:
        scaling["attention_factor"] = cfg.rope_attention_factor
    out["rope_scaling"] = scaling
    return out


def _layer_types(cfg: TransformerConfig) -> list[str]:
    return ["sliding_attention" if cfg.windowed(i) else "full_attention" for i in range(cfg.n_layer)]


def _windows_from_layer_types(hf: Config, window: int | None, default_types: list[str]) -> Config:
    types = hf.get("layer_types") or default_types
    unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
    if unknown:
        raise ConfigError(f"layer_types {unknown[0]!r} is not supported (expected sliding_attention or full_attention)")
    if not window or "sliding_attention" not in types:
        return {}
    return {"sliding_window": int(window),
            "global_layers": tuple(i for i, kind in enumerate(types) if kind == "full_attention")}


def _bias_fields(hf: Config) -> Config:
    attention, mlp = bool(hf.get("attention_bias")), bool(hf.get("mlp_bias"))
    return {"bias": mlp, "attn_bias": "default" if attention == mlp else ("all" if attention else "none")}


def _has_attention_bias(cfg: TransformerConfig) -> bool:
    return cfg.attn_bias == "all" or (cfg.attn_bias == "default" and cfg.bias)


def _gated(hf: Config, key: str) -> Config:
    name = hf.get(key) or "silu"
    if name not in GATED:
        raise ConfigError(f"{key} {name!r} is not supported (supported: {', '.join(GATED)})")
    return {"mlp": GATED[name]}


def _decoder_config(hf: Config, family: Family) -> TransformerConfig:
    """A Llama-shaped Hugging Face config (every family but GPT-2) as a TransformerConfig."""
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size") if k not in hf]
    if missing:
        raise ConfigError(f"{family.model_type} config.json has no {missing[0]}")
    heads, width = hf["num_attention_heads"], hf["hidden_size"]
    head_dim = hf.get("head_dim") or width // heads
    fields: Config = dict(
        vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"], n_head=heads, n_kv_head=hf.get("num_key_value_heads") or heads,
        d_model=width, mlp_hidden=hf["intermediate_size"], norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
        position="rope", tie_embeddings=bool(hf.get("tie_word_embeddings", False)), family=family.model_type,
        head_size=0 if head_dim * heads == width else head_dim)
    fields.update(_gated(hf, family.activation_key))
    fields.update(_bias_fields(hf))
    fields.update(_rope_fields(hf, hf.get("rope_scaling") or hf.get("rope_parameters") or {}, head_dim,
                               family.rope_aliases))
    fields.update(family.read(hf))
    fields.update(family.fixed)
    return TransformerConfig(**fields)


def _decoder_hf_config(cfg: TransformerConfig, family: Family, hidden: int) -> Config:
    out: Config = {
        "model_type": family.model_type, "architectures": [family.architecture], "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "intermediate_size": hidden, "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings, family.activation_key: GATED_NAMES[cfg.mlp],
        "attention_dropout": 0.0,
        "pad_token_id": None}   # some families' defaults (Phi-3: 32000) lie outside a smaller vocabulary
    out.update(_rope_config(cfg))
    out.update(family.write(cfg))
    return out


# ---------------------------------------------------------------------------------------------------------
# The families' own keys
# ---------------------------------------------------------------------------------------------------------

def _llama_write(cfg: TransformerConfig) -> Config:
    return {"attention_bias": _has_attention_bias(cfg), "mlp_bias": cfg.bias}


def _attention_bias_write(cfg: TransformerConfig) -> Config:
    return {"attention_bias": _has_attention_bias(cfg)}


def _all_layers_window(hf: Config) -> Config:
    return {"sliding_window": int(hf["sliding_window"])} if hf.get("sliding_window") else {}


def _all_layers_window_write(cfg: TransformerConfig) -> Config:
    return {"sliding_window": cfg.sliding_window or None}


def _qwen_read(hf: Config) -> Config:
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    first = hf.get("max_window_layers", 28)   # transformers' default
    default = ["sliding_attention" if i >= first else "full_attention" for i in range(hf["num_hidden_layers"])]
    return _windows_from_layer_types(hf, window, default)


def _qwen_write(cfg: TransformerConfig) -> Config:
    out: Config = {"use_sliding_window": bool(cfg.sliding_window), "sliding_window": cfg.sliding_window or None}
    if cfg.sliding_window:
        types = _layer_types(cfg)
        out["layer_types"] = types
        # transformers 4 reads max_window_layers: windows on the layers from it on, when the pattern is that one
        out["max_window_layers"] = types.index("sliding_attention") if "sliding_attention" in types else cfg.n_layer
    return out


def _gemma_read(hf: Config) -> Config:
    out: Config = {}
    if hf.get("use_bidirectional_attention"):
        raise ConfigError("use_bidirectional_attention=true (an encoder, not a causal language model) is not supported")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    scalar = hf.get("query_pre_attn_scalar")
    if scalar and scalar != head_dim:
        out["attn_scale"] = float(scalar) ** -0.5
    for ours, theirs in (("attn_softcap", "attn_logit_softcapping"), ("logit_softcap", "final_logit_softcapping")):
        if hf.get(theirs):
            out[ours] = float(hf[theirs])
    return out


def _gemma_write(cfg: TransformerConfig) -> Config:
    scalar = round(cfg.attn_scale ** -2) if cfg.attn_scale else cfg.head_dim
    if cfg.attn_scale and abs(scalar ** -0.5 - cfg.attn_scale) > 1e-9 * cfg.attn_scale:
        raise ConfigError(f"model.attn_scale={cfg.attn_scale} is not 1/sqrt of a whole number, which Gemma's "
                          "query_pre_attn_scalar must be")
    return {"attention_bias": _has_attention_bias(cfg), "query_pre_attn_scalar": scalar,
            "attn_logit_softcapping": cfg.attn_softcap or None, "final_logit_softcapping": cfg.logit_softcap or None,
            "sliding_window": cfg.sliding_window or None, "layer_types": _layer_types(cfg)}


def _gemma2_read(hf: Config) -> Config:
    out = _gemma_read(hf)
    n = hf["num_hidden_layers"]
    default = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
    out.update(_windows_from_layer_types(hf, hf.get("sliding_window", 4096), default))
    return out


def _gemma2_write(cfg: TransformerConfig) -> Config:
    out = _gemma_write(cfg)
    if not cfg.sliding_window:   # transformers' Gemma 2 always has a window: one as long as the context is none
        out.update(sliding_window=cfg.block_size, layer_types=["full_attention"] * cfg.n_layer)
    return out


def _gemma3_rope(hf: Config) -> tuple[Config, Config]:
    """(global, local) rotary parameters of Gemma 3: nested by layer type in transformers >= 5, else rope_theta,
    rope_scaling (global) and rope_local_base_freq."""
    params = hf.get("rope_parameters") or {}
    full = dict(params.get("full_attention") or {})
    local = dict(params.get("sliding_attention") or {})
    full.update(hf.get("rope_scaling") or {})
    full.setdefault("rope_theta", hf.get("rope_theta", 1_000_000.0))
    local.setdefault("rope_theta", hf.get("rope_local_base_freq", 10_000.0))
    if (local.get("rope_type") or local.get("type") or "default") != "default":
        raise ConfigError("Gemma 3: scaled rotary positions on the sliding-window layers are not supported")
    return full, local


def _gemma3_read(hf: Config) -> Config:
    out = _gemma_read(hf)
    n = hf["num_hidden_layers"]
    pattern = hf.get("sliding_window_pattern", 6)
    default = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    out.update(_windows_from_layer_types(hf, hf.get("sliding_window", 4096), default))
    full, local = _gemma3_rope(hf)
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    out.update(_rope_fields(hf, full, head_dim))
    if out.get("sliding_window"):
        out["rope_local_theta"] = float(local["rope_theta"])
    return out


def _gemma3_write(cfg: TransformerConfig) -> Config:
    out = _gemma2_write(cfg)
    out["rope_local_base_freq"] = cfg.rope_local_theta or cfg.rope_theta
    return out


def _phi3_write(cfg: TransformerConfig) -> Config:
    out = _all_layers_window_write(cfg)
    partial = (cfg.rotary_dim or cfg.head_dim) / cfg.head_dim
    if int(cfg.head_dim * partial) != (cfg.rotary_dim or cfg.head_dim):
        raise ConfigError(f"model.rotary_dim={cfg.rotary_dim} is no fraction of the head size {cfg.head_dim} that "
                          "transformers' partial_rotary_factor rounds back to it")
    out["partial_rotary_factor"] = partial
    if cfg.rope_original_context:   # Phi-3 reads it from the top level, before rope_scaling
        out["original_max_position_embeddings"] = cfg.rope_original_context
    return out


LLAMA_NORMS = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
SANDWICH_NORMS = {"attn_norm": "input_layernorm", "attn_post_norm": "post_attention_layernorm",
                  "mlp_norm": "pre_feedforward_layernorm", "mlp_post_norm": "post_feedforward_layernorm"}
GATED_MLP = {"mlp": tuple(GATED_NAMES)}
LLAMA_FIXED = {"position": "rope", "norm": "rmsnorm", "bias": False}
GEMMA_FIXED = {**LLAMA_FIXED, "norm_offset": True, "embed_scale": True}
GEMMA_SWITCHES = ROPE | {"head_size", "attn_scale", "attn_softcap", "logit_softcap", "sliding_window", "global_layers"}

FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("gpt2", "GPT2LMHeadModel", "GPT-2, DistilGPT-2",
           {"position": "learned", "norm": "layernorm", "bias": True}, {"mlp": ("gelu_tanh", "gelu")}),
    Family("llama", "LlamaForCausalLM", "Llama 1, 2, 3, 3.1, 3.2, 3.3; SmolLM, SmolLM2; TinyLlama",
           {k: v for k, v in LLAMA_FIXED.items() if k != "bias"},
           {**GATED_MLP, "attn_bias": ("default", "all", "none")},
           ROPE | {"head_size", "bias"}, LLAMA_NORMS, write=_llama_write),
    Family("mistral", "MistralForCausalLM", "Mistral 7B v0.1-v0.3, Mistral NeMo", LLAMA_FIXED, GATED_MLP,
           ROPE | {"head_size", "sliding_window"}, LLAMA_NORMS, read=_all_layers_window,
           write=_all_layers_window_write),
    Family("qwen2", "Qwen2ForCausalLM", "Qwen2, Qwen2.5 (and Coder / Math)", {**LLAMA_FIXED, "attn_bias": "qkv"},
           GATED_MLP, ROPE | {"sliding_window", "global_layers"}, LLAMA_NORMS, read=_qwen_read, write=_qwen_write),
    Family("qwen3", "Qwen3ForCausalLM", "Qwen3 (dense)", {**LLAMA_FIXED, "qk_norm": True, "qk_norm_weight": "head"},
           {**GATED_MLP, "attn_bias": ("default", "all"), "qk_norm_weight": ("none",)},   # none: unit weights
           ROPE | {"head_size", "sliding_window", "global_layers"}, LLAMA_NORMS,
           read=_qwen_read, write=lambda cfg: {**_attention_bias_write(cfg), **_qwen_write(cfg)}),
    Family("phi3", "Phi3ForCausalLM", "Phi-3, Phi-3.5-mini, Phi-4-mini", LLAMA_FIXED, GATED_MLP,
           ROPE | {"sliding_window", "rotary_dim"}, LLAMA_NORMS, fused=True, read=_all_layers_window,
           write=_phi3_write, rope_aliases={"su": "longrope", "yarn": "longrope"}),   # as transformers' Phi-3 does
    Family("gemma", "GemmaForCausalLM", "Gemma 1, CodeGemma", GEMMA_FIXED,
           {**GATED_MLP, "attn_bias": ("default", "all")}, ROPE | {"head_size"}, LLAMA_NORMS, read=_gemma_read,
           write=_attention_bias_write),
    Family("gemma2", "Gemma2ForCausalLM", "Gemma 2", {**GEMMA_FIXED, "block_norms": "sandwich"},
           {**GATED_MLP, "attn_bias": ("default", "all")}, GEMMA_SWITCHES, SANDWICH_NORMS,
           activation_key="hidden_activation", read=_gemma2_read, write=_gemma2_write),
    Family("gemma3_text", "Gemma3ForCausalLM", "Gemma 3 text models (270M, 1B)",
           {**GEMMA_FIXED, "block_norms": "sandwich", "qk_norm": True, "qk_norm_weight": "head"},
           {**GATED_MLP, "attn_bias": ("default", "all")}, GEMMA_SWITCHES | {"rope_local_theta"}, SANDWICH_NORMS,
           activation_key="hidden_activation", read=_gemma3_read, write=_gemma3_write),
    Family("olmo2", "Olmo2ForCausalLM", "OLMo 2",
           {**LLAMA_FIXED, "block_norms": "post", "qk_norm": True, "qk_norm_weight": "full"},
           {**GATED_MLP, "attn_bias": ("default", "all")}, ROPE | {"head_size"},
           {"attn_post_norm": "post_attention_layernorm", "mlp_post_norm": "post_feedforward_layernorm"},
           write=_attention_bias_write),
)}


def supported_model_types() -> str:
    return ", ".join(FAMILIES)


# ---------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------

IGNORED = ("rotary_emb.inv_freq", "attn.bias", "attn.masked_bias")   # buffers some checkpoints carry


class Deferred:
    """A tensor known by its shape and dtype before it is read: `load()` makes it (from a memory-mapped
    safetensors file, say), so a checkpoint is converted one tensor at a time."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, make: Callable[[], torch.Tensor]):
        self.shape, self.dtype, self._make = torch.Size(shape), dtype, make

    @classmethod
    def of(cls, tensor: "torch.Tensor | Deferred") -> "Deferred":
        return tensor if isinstance(tensor, Deferred) else cls(tensor.shape, tensor.dtype, lambda: tensor)

    def load(self) -> torch.Tensor:
        return self._make()


def _cat(parts: list[Deferred]) -> Deferred:
    if len(parts) == 1:
        return parts[0]
    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    return Deferred(shape, parts[0].dtype, lambda: torch.cat([p.load() for p in parts]))


def _transposed(part: Deferred) -> Deferred:
    return Deferred(tuple(reversed(part.shape)), part.dtype, lambda: part.load().t().contiguous())


class _Weights:
    """A Hugging Face state dict read key by key, so that leftover weights (a layout genloom misreads) are
    found instead of silently dropped. Values are tensors or `Deferred` ones; what it hands out is Deferred."""

    def __init__(self, state: Mapping[str, "torch.Tensor | Deferred"], model_type: str):
        self.state, self.model_type, self.used = state, model_type, set()

    def __call__(self, key: str) -> Deferred:
        if key not in self.state:
            raise ConfigError(f"the {self.model_type} weights have no {key} (a config.json and weights of different "
                              "models?)")
        self.used.add(key)
        return Deferred.of(self.state[key])

    def get(self, key: str) -> Deferred | None:
        return self(key) if key in self.state else None

    def check_all_used(self) -> None:
        left = sorted(k for k in self.state if k not in self.used and not k.endswith(IGNORED))
        if left:
            raise ConfigError(f"the {self.model_type} weights hold {len(left)} tensor(s) this config does not use, "
                              f"e.g. {left[0]}; genloom would drop them, so the model is refused")


def _gpt2_config(hf: Config) -> TransformerConfig:
    activation = hf.get("activation_function", "gelu_new")
    mlp = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu2": "relu2"}.get(activation)
    if mlp is None:
        raise ConfigError(f"GPT-2 config: activation_function {activation!r} is not supported")
    return TransformerConfig(
        vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", 1024), n_layer=hf["n_layer"],
        n_head=hf["n_head"], d_model=hf["n_embd"], mlp=mlp, mlp_hidden=hf.get("n_inner") or 0,
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), position="learned", bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True))


GPT2_LAYER = (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.up", "mlp.c_fc"),
              ("mlp.down", "mlp.c_proj"))


def _gpt2_from(cfg: TransformerConfig, w: _Weights) -> dict[str, Deferred]:
    p = "transformer." if "transformer.wte.weight" in w.state else ""
    out = {"embed.weight": w(p + "wte.weight"), "pos_embed.weight": w(p + "wpe.weight"),
           "final_norm.weight": w(p + "ln_f.weight"), "final_norm.bias": w(p + "ln_f.bias")}
    for i in range(cfg.n_layer):
        h, b = f"{p}h.{i}.", f"blocks.{i}."
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[b + ours + ".weight"], out[b + ours + ".bias"] = w(h + theirs + ".weight"), w(h + theirs + ".bias")
        for ours, theirs in GPT2_LAYER:
            out[b + ours + ".weight"] = _transposed(w(h + theirs + ".weight"))  # Conv1D is (in, out)
            out[b + ours + ".bias"] = w(h + theirs + ".bias")
    return out


def _gpt2_to(cfg: TransformerConfig, state: dict[str, torch.Tensor]) -> tuple[Config, dict[str, torch.Tensor]]:
    hidden = state["blocks.0.mlp.down.weight"].shape[1]
    hf_cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
              "n_positions": cfg.block_size, "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
              "n_inner": hidden, "activation_function": "gelu_new" if cfg.mlp == "gelu_tanh" else "gelu",
              "layer_norm_epsilon": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    out = {"transformer.wte.weight": state["embed.weight"], "transformer.wpe.weight": state["pos_embed.weight"],
           "transformer.ln_f.weight": state["final_norm.weight"], "transformer.ln_f.bias": state["final_norm.bias"]}
    for i in range(cfg.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[h + theirs + ".weight"] = state[b + ours + ".weight"]
            out[h + theirs + ".bias"] = state[b + ours + ".bias"]
        for ours, theirs in GPT2_LAYER:
            out[h + theirs + ".weight"] = state[b + ours + ".weight"].t().contiguous()
            out[h + theirs + ".bias"] = state[b + ours + ".bias"]
    return hf_cfg, out


def _decoder_from(cfg: TransformerConfig, family: Family, w: _Weights) -> dict[str, Deferred]:
    out = {"embed.weight": w("model.embed_tokens.weight"), "final_norm.weight": w("model.norm.weight")}
    for i in range(cfg.n_layer):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        for ours, theirs in family.norms.items():
            out[f"{b}{ours}.weight"] = w(f"{h}{theirs}.weight")
        for suffix in ("weight", "bias"):
            if family.fused:
                pairs = {"attn.qkv": ["self_attn.qkv_proj"], "mlp.up": ["mlp.gate_up_proj"]}
            else:
                pairs = {"attn.qkv": [f"self_attn.{p}_proj" for p in "qkv"], "mlp.up": ["mlp.gate_proj", "mlp.up_proj"]}
            pairs.update({"attn.proj": ["self_attn.o_proj"], "mlp.down": ["mlp.down_proj"]})
            for ours, theirs in pairs.items():
                parts = [w.get(f"{h}{t}.{suffix}") for t in theirs]
                if all(p is not None for p in parts):
                    out[f"{b}{ours}.{suffix}"] = _cat(parts)
        if cfg.qk_norm_weight != "none":
            for name in ("q_norm", "k_norm"):
                out[f"{b}attn.{name}.weight"] = w(f"{h}self_attn.{name}.weight")
    return out


def _decoder_to(cfg: TransformerConfig, family: Family, state: dict[str, torch.Tensor]
                ) -> tuple[Config, dict[str, torch.Tensor]]:
    hidden = state["blocks.0.mlp.down.weight"].shape[1]
    hf_cfg = _decoder_hf_config(cfg, family, hidden)
    out = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": state["final_norm.weight"]}
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    for i in range(cfg.n_layer):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        for ours, theirs in family.norms.items():
            out[f"{h}{theirs}.weight"] = state[f"{b}{ours}.weight"]
        for suffix in ("weight", "bias"):
            qkv, up = state.get(f"{b}attn.qkv.{suffix}"), state.get(f"{b}mlp.up.{suffix}")
            if qkv is not None and family.fused:
                out[f"{h}self_attn.qkv_proj.{suffix}"] = qkv
            elif qkv is not None:
                for name, part in zip("qkv", qkv.split([q, kv, kv])):
                    out[f"{h}self_attn.{name}_proj.{suffix}"] = part.contiguous()
            if up is not None and family.fused:
                out[f"{h}mlp.gate_up_proj.{suffix}"] = up
            elif up is not None:
                gate, value = up.chunk(2)
                out[f"{h}mlp.gate_proj.{suffix}"] = gate.contiguous()
                out[f"{h}mlp.up_proj.{suffix}"] = value.contiguous()
            for ours, theirs in (("attn.proj", "self_attn.o_proj"), ("mlp.down", "mlp.down_proj")):
                if f"{b}{ours}.{suffix}" in state:
                    out[f"{h}{theirs}.{suffix}"] = state[f"{b}{ours}.{suffix}"]
        if cfg.qk_norm:
            for name in ("q_norm", "k_norm"):
                weight = state.get(f"{b}attn.{name}.weight")
                # genloom's weightless QK-norm is the family's with unit weights
                out[f"{h}self_attn.{name}.weight"] = weight if weight is not None else torch.ones(cfg.head_dim)
    return hf_cfg, out


# ---------------------------------------------------------------------------------------------------------
# The two directions
# ---------------------------------------------------------------------------------------------------------

def _family(model_type: Any) -> Family:
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        raise ConfigError(f"Hugging Face model_type {model_type!r} is not supported (supported: "
                          f"{supported_model_types()})")
    return family


def from_hf(hf_config: Config, hf_state: dict[str, torch.Tensor]) -> tuple[TransformerConfig, dict[str, torch.Tensor]]:
    """A Hugging Face (config dict, state dict) of a supported family as genloom's (config, state dict)."""
    cfg, out = from_hf_deferred(hf_config, hf_state)
    return cfg, {k: v.load() for k, v in out.items()}


def from_hf_deferred(hf_config: Config, hf_state: Mapping[str, "torch.Tensor | Deferred"]
                     ) -> tuple[TransformerConfig, dict[str, Deferred]]:
    """As `from_hf`, every check made from shapes alone and each converted tensor read only when its `load()`
    is called: a checkpoint larger than memory converts tensor by tensor."""
    family = _family(hf_config.get("model_type"))
    weights = _Weights(hf_state, family.model_type)
    try:
        if family.model_type == "gpt2":
            cfg = _gpt2_config(hf_config)
            out = _gpt2_from(cfg, weights)
        else:
            cfg = _decoder_config(hf_config, family)
            out = _decoder_from(cfg, family, weights)
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{family.model_type} config.json: {type(error).__name__}: {error}") from None
    if not cfg.tie_embeddings:
        out["head.weight"] = weights("lm_head.weight")
    else:
        weights.get("lm_head.weight")       # a tied copy some checkpoints carry
    weights.check_all_used()
    _check_shapes(cfg, out, family.model_type)
    return cfg, out


def _check_shapes(cfg: TransformerConfig, state: dict[str, torch.Tensor], model_type: str) -> None:
    """The converted weights are exactly the ones genloom's model of `cfg` has, with their shapes."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    for key in sorted(set(expected) | set(state)):
        got = tuple(state[key].shape) if key in state else None
        if got != expected.get(key):
            what = "is missing" if got is None else ("is not used" if key not in expected else
                                                     f"has shape {list(got)}, not {list(expected[key])}")
            raise ConfigError(f"{model_type} weights do not fit their config.json: genloom's {key} {what}")


def _mismatches(cfg: TransformerConfig, family: Family) -> list[str]:
    """The settings of `cfg` that `family` cannot hold, as 'model.key=value (family: needed)' phrases."""
    out = []
    for f in dataclasses.fields(TransformerConfig):
        name, value = f.name, getattr(cfg, f.name)
        if name in COMMON:
            continue
        if name in family.fixed or name in family.accepts:
            allowed = ((family.fixed[name],) if name in family.fixed else ()) + family.accepts.get(name, ())
            if value not in allowed:
                out.append(f"model.{name}={value!r} ({family.model_type} needs {' or '.join(map(repr, allowed))})")
        elif name not in family.switches and value != getattr(DEFAULTS, name):
            out.append(f"model.{name}={value!r} ({family.model_type} has no such switch)")
    if family.model_type == "gpt2" and cfg.kv_heads != cfg.n_head:
        out.append(f"model.n_kv_head={cfg.n_kv_head} (it has no grouped-query attention)")
    return out


def hf_style(cfg: TransformerConfig) -> str:
    """The Hugging Face model_type that holds this config exactly: the family it was imported from when that one
    still fits, else the first that does."""
    order = list(FAMILIES.values())
    if cfg.family in FAMILIES:
        order.insert(0, FAMILIES[cfg.family])
    misses = {}
    for family in order:
        misses[family.model_type] = _mismatches(cfg, family)
        if not misses[family.model_type]:
            return family.model_type
    closest = min(misses, key=lambda k: len(misses[k]))
    raise ConfigError(f"{' and '.join(misses[closest])}: no exact Hugging Face equivalent among the supported "
                      f"families (closest: {closest}; supported: {supported_model_types()})")


def to_hf(cfg: TransformerConfig, state: dict[str, torch.Tensor]) -> tuple[Config, dict[str, torch.Tensor]]:
    """genloom's (config, state dict) as a Hugging Face (config dict, state dict) of the family `hf_style` picks."""
    family = FAMILIES[hf_style(cfg)]
    if family.model_type == "gpt2":
        hf_cfg, out = _gpt2_to(cfg, state)
    else:
        hf_cfg, out = _decoder_to(cfg, family, state)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["head.weight"]
    return hf_cfg, out
