"""Parts several family files share: llama's tensor table and dimensions, the GGUF hyperparameter sets, the
llama-style ONNX layout. A family that differs builds its own from these (qwen3 adds q/k norms to llama's
tensors); a family of its own kind (gpt2, bloom) spells everything out in its file."""

from __future__ import annotations

from typing import Any, Callable

from ropeconv.families.spec import ALWAYS, OPTIONAL, UNTIED, Config, Dim, Hparam, T, attn_config, first, get

# ---------------------------------------------------------------------------------------- tensor shapes


def linear(name: str, out: str, inp: str, bias: str | None = None) -> tuple[T, ...]:
    """nn.Linear: weight [out, in]; its bias, when the checkpoint has one, [out]."""
    return (T(f"{name}.weight", f"{out}, {inp}"), T(f"{name}.bias", bias or out, OPTIONAL))


def norm(name: str, need: str = ALWAYS, bias: bool = False) -> tuple[T, ...]:
    return (T(f"{name}.weight", "hidden", need),) + ((T(f"{name}.bias", "hidden", need),) if bias else ())


VOCAB = ("vocab", Dim(("vocab_size",)))
LLAMA_DIMS = (
    ("hidden", Dim(("hidden_size",))),
    ("layers", Dim(("num_hidden_layers",))),
    ("heads", Dim(("num_attention_heads",))),
    ("kv_heads", Dim(("num_key_value_heads",), "heads")),
    ("head_dim", Dim(("head_dim",), "hidden // heads")),
    ("inter", Dim(("intermediate_size",))),
    VOCAB,
)
L = "model.layers.{i}."
LLAMA_TENSORS = (
    T("model.embed_tokens.weight", "vocab, hidden"),
    *linear(L + "self_attn.q_proj", "heads*head_dim", "hidden"),
    *linear(L + "self_attn.k_proj", "kv_heads*head_dim", "hidden"),
    *linear(L + "self_attn.v_proj", "kv_heads*head_dim", "hidden"),
    *linear(L + "self_attn.o_proj", "hidden", "heads*head_dim"),
    *linear(L + "mlp.gate_proj", "inter", "hidden"),
    *linear(L + "mlp.up_proj", "inter", "hidden"),
    *linear(L + "mlp.down_proj", "hidden", "inter"),
    *norm(L + "input_layernorm"),
    *norm(L + "post_attention_layernorm"),
    *norm("model.norm"),
    T("lm_head.weight", "vocab, hidden", UNTIED),
)
GQA = (("kv_heads", "heads"),)  # transformers repeats each key/value head heads/kv_heads times


def with_head_dim_default(dims: tuple[tuple[str, Dim], ...], default: str) -> tuple[tuple[str, Dim], ...]:
    """The family's config class defaults head_dim to a number (Qwen3: 128, Gemma: 256), not hidden/heads."""
    return tuple((n, Dim(("head_dim",), default)) if n == "head_dim" else (n, d) for n, d in dims)


# ------------------------------------------------------------------------------------------------ GGUF

# the same hyperparameter under each family's config.json name (GPT-2: n_embd, MPT: d_model, BLOOM: n_head …)
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "n_embed")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers")
HEAD_KEYS = ("num_attention_heads", "n_head", "n_heads")


def first_of(keys: tuple[str, ...]) -> Callable[[Config], Any]:
    return lambda c: first(c, keys)


def heads_kv(c: Config) -> Any:
    return c.get("num_key_value_heads") or c.get("num_attention_heads")


def times_hidden(n: int) -> Callable[[Config], Any]:
    return lambda c: n * first(c, HIDDEN_KEYS) if isinstance(first(c, HIDDEN_KEYS), int) else None


SHAPE = (
    Hparam("embedding_length", "u32", first_of(HIDDEN_KEYS)),
    Hparam("block_count", "u32", first_of(LAYER_KEYS)),
    Hparam("attention.head_count", "u32", first_of(HEAD_KEYS)),
)
COMMON = SHAPE + (Hparam("feed_forward_length", "u32", get("intermediate_size")),)
LAYER_NORM = (Hparam("attention.layer_norm_epsilon", "f32", get("layer_norm_epsilon", 1e-5)),)
# BLOOM's loader hard-codes 8 and MPT's reads it (absent: no ALiBi at all); both use 8 in transformers
ALIBI = (Hparam("attention.max_alibi_bias", "f32", attn_config("alibi_bias_max", 8.0)),)
RMS = (
    Hparam("attention.head_count_kv", "u32", heads_kv),
    Hparam("attention.layer_norm_rms_epsilon", "f32", get("rms_norm_eps", 1e-6)),
)


def refuse_attention_bias(gguf_arch: str) -> Callable[[Config, int], str | None]:
    return lambda c, d: (f"attention_bias: llama.cpp's {gguf_arch} graph has no output-projection bias"
                         if c.get("attention_bias") else None)


# ------------------------------------------------------------------------------------------------ ONNX

LLAMA_ONNX: dict[str, Any] = dict(
    embed="model.embed_tokens.weight", layer="model.layers.{i}.", final_norm="model.norm", lm_head="lm_head.weight",
    norm="rms", eps_key="rms_norm_eps", attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), qkv_split="separate",
    o_proj="self_attn.o_proj", mlp=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), mlp_kind="gated",
)
GEMMA_ONNX: dict[str, Any] = dict(LLAMA_ONNX, norm="rms_plus_one", embed_scale=True)

# ------------------------------------------------------------------------------------------------ tests

# the tiny test model of a llama-shaped family (4 query heads sharing 2 key/value heads)
TINY_LLAMA: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
