"""Weight and config mapping between genloom's transformer and Hugging Face GPT-2 / Llama.

Only names and layouts change: GPT-2's `Conv1D` stores weights as (in, out), so they are
transposed; Llama's separate q/k/v and gate/up projections are concatenated into genloom's fused
`qkv` and `up` matrices. Hugging Face's Llama weights already use the "rotate half" rotary layout
that genloom uses, so no permutation is needed.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.errors import ConfigError
from .transformer import TransformerConfig

__all__ = ["from_hf", "to_hf", "hf_style"]


def _gpt2_config(hf: dict[str, Any]) -> TransformerConfig:
    activation = hf.get("activation_function", "gelu_new")
    mlp = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu2": "relu2"}.get(activation)
    if mlp is None:
        raise ConfigError(f"GPT-2 config: activation_function {activation!r} is not supported")
    return TransformerConfig(
        vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", 1024), n_layer=hf["n_layer"],
        n_head=hf["n_head"], d_model=hf["n_embd"], mlp=mlp, mlp_hidden=hf.get("n_inner") or 0,
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), position="learned", bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True))


def _llama_config(hf: dict[str, Any]) -> TransformerConfig:
    theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    rope_type = (hf.get("rope_parameters") or hf.get("rope_scaling") or {}).get("rope_type", "default")
    if rope_type != "default":
        raise ConfigError(f"Llama config: rope_type {rope_type!r} (scaled rotary positions) is not supported")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    if head_dim * hf["num_attention_heads"] != hf["hidden_size"]:
        raise ConfigError("Llama config: head_dim * num_attention_heads must equal hidden_size")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ConfigError("Llama config: attention_bias / mlp_bias are not supported")
    return TransformerConfig(
        vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"], d_model=hf["hidden_size"],
        mlp="swiglu", mlp_hidden=hf["intermediate_size"], norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
        position="rope", rope_theta=float(theta), bias=False, tie_embeddings=hf.get("tie_word_embeddings", False))


def from_hf(hf_config: dict[str, Any], hf_state: dict[str, torch.Tensor]) -> tuple[TransformerConfig, dict[str, torch.Tensor]]:
    """A Hugging Face GPT-2 or Llama (config dict, state dict) as genloom's (config, state dict)."""
    kind = hf_config.get("model_type")
    if kind == "gpt2":
        cfg = _gpt2_config(hf_config)
        s = {k.removeprefix("transformer."): v for k, v in hf_state.items()}
        out = {"embed.weight": s["wte.weight"], "pos_embed.weight": s["wpe.weight"],
               "final_norm.weight": s["ln_f.weight"], "final_norm.bias": s["ln_f.bias"]}
        for i in range(cfg.n_layer):
            h, b = f"h.{i}.", f"blocks.{i}."
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[b + ours + ".weight"], out[b + ours + ".bias"] = s[h + theirs + ".weight"], s[h + theirs + ".bias"]
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                                 ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
                out[b + ours + ".weight"] = s[h + theirs + ".weight"].t().contiguous()  # Conv1D is (in, out)
                out[b + ours + ".bias"] = s[h + theirs + ".bias"]
        if not cfg.tie_embeddings:
            out["head.weight"] = hf_state["lm_head.weight"]
        return cfg, out
    if kind == "llama":
        cfg = _llama_config(hf_config)
        s = {k.removeprefix("model."): v for k, v in hf_state.items()}
        out = {"embed.weight": s["embed_tokens.weight"], "final_norm.weight": s["norm.weight"]}
        for i in range(cfg.n_layer):
            h, b = f"layers.{i}.", f"blocks.{i}."
            out[b + "attn_norm.weight"] = s[h + "input_layernorm.weight"]
            out[b + "mlp_norm.weight"] = s[h + "post_attention_layernorm.weight"]
            out[b + "attn.qkv.weight"] = torch.cat([s[h + f"self_attn.{p}_proj.weight"] for p in "qkv"])
            out[b + "attn.proj.weight"] = s[h + "self_attn.o_proj.weight"]
            out[b + "mlp.up.weight"] = torch.cat([s[h + "mlp.gate_proj.weight"], s[h + "mlp.up_proj.weight"]])
            out[b + "mlp.down.weight"] = s[h + "mlp.down_proj.weight"]
        if not cfg.tie_embeddings:
            out["head.weight"] = hf_state["lm_head.weight"]
        return cfg, out
    raise ConfigError(f"Hugging Face model_type {kind!r} is not supported (expected gpt2 or llama)")


def hf_style(cfg: TransformerConfig) -> str:
    """'gpt2' or 'llama': which Hugging Face architecture can hold this config exactly."""
    if cfg.qk_norm:
        raise ConfigError("model.qk_norm=true has no Hugging Face GPT-2 or Llama equivalent")
    if (cfg.position, cfg.norm, cfg.bias, cfg.kv_heads) == ("learned", "layernorm", True, cfg.n_head) \
            and cfg.mlp in ("gelu_tanh", "gelu"):
        return "gpt2"
    if (cfg.position, cfg.norm, cfg.bias, cfg.mlp) == ("rope", "rmsnorm", False, "swiglu"):
        return "llama"
    raise ConfigError("this model mixes GPT-2 and Llama choices (position, norm, bias, mlp, qk_norm) and has no "
                      "exact Hugging Face equivalent")


def to_hf(cfg: TransformerConfig, state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """genloom's (config, state dict) as a Hugging Face GPT-2 or Llama (config dict, state dict)."""
    style = hf_style(cfg)
    hidden = state["blocks.0.mlp.down.weight"].shape[1]
    if style == "gpt2":
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
                out[h + theirs + ".weight"], out[h + theirs + ".bias"] = state[b + ours + ".weight"], state[b + ours + ".bias"]
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                                 ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
                out[h + theirs + ".weight"] = state[b + ours + ".weight"].t().contiguous()
                out[h + theirs + ".bias"] = state[b + ours + ".bias"]
    else:
        hf_cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": cfg.vocab_size,
                  "max_position_embeddings": cfg.block_size, "hidden_size": cfg.d_model, "intermediate_size": hidden,
                  "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
                  "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "rms_norm_eps": cfg.norm_eps,
                  "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
                  "attention_bias": False, "mlp_bias": False}
        out = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": state["final_norm.weight"]}
        q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        for i in range(cfg.n_layer):
            h, b = f"model.layers.{i}.", f"blocks.{i}."
            out[h + "input_layernorm.weight"] = state[b + "attn_norm.weight"]
            out[h + "post_attention_layernorm.weight"] = state[b + "mlp_norm.weight"]
            for name, part in zip("qkv", state[b + "attn.qkv.weight"].split([q, kv, kv])):
                out[h + f"self_attn.{name}_proj.weight"] = part.contiguous()
            out[h + "self_attn.o_proj.weight"] = state[b + "attn.proj.weight"]
            gate, up = state[b + "mlp.up.weight"].chunk(2)
            out[h + "mlp.gate_proj.weight"], out[h + "mlp.up_proj.weight"] = gate.contiguous(), up.contiguous()
            out[h + "mlp.down_proj.weight"] = state[b + "mlp.down.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["head.weight"]
    return hf_cfg, out
