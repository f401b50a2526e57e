"""Parts several family files share: llama's tensor table and dimensions, the GGUF hyperparameter sets, the
llama-style ONNX layout, the mixture-of-experts pieces (qwen3_moe and qwen2_moe share Qwen's). A family that
differs builds its own from these (qwen3 adds q/k norms to llama's tensors); a family of its own kind (gpt2,
bloom) spells everything out in its file."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ropeconv.errors import InputError
from ropeconv.families.spec import (
    ALWAYS,
    BOOL,
    FLOAT,
    INT,
    MIN_CONTEXT,
    OPTIONAL,
    STR,
    UNTIED,
    Config,
    Dim,
    Hparam,
    T,
    Value,
    attn_config,
    first,
    get,
)

# ---------------------------------------------------------------------------------------- tensor shapes


def linear(name: str, out: str, inp: str, bias: str | None = None) -> tuple[T, ...]:
    """nn.Linear: weight [out, in]; its bias, when the checkpoint has one, [out]."""
    return (T(f"{name}.weight", f"{out}, {inp}"), T(f"{name}.bias", bias or out, OPTIONAL))


def norm(name: str, need: str = ALWAYS, bias: bool = False) -> tuple[T, ...]:
    return (T(f"{name}.weight", "hidden", need),) + ((T(f"{name}.bias", "hidden", need),) if bias else ())


VOCAB = ("vocab", Dim(("vocab_size",)))
# width, depth and heads under transformers' standard config names (GPT-2, MPT and BLOOM use their own)
STANDARD_DIMS = (
    ("hidden", Dim(("hidden_size",))),
    ("layers", Dim(("num_hidden_layers",))),
    ("heads", Dim(("num_attention_heads",))),
)
LLAMA_DIMS = (
    *STANDARD_DIMS,
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


# ----------------------------------------------------------------------------- mixture of experts (shapes)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def qwen_moe_sparse(config: Mapping[str, Any], i: int, dims: Mapping[str, int]) -> bool:
    """transformers' Qwen2/3-MoE: a layer holds experts unless mlp_only_layers lists it or decoder_sparse_step
    skips it (FamilyShapes.sparse)."""
    only = config.get("mlp_only_layers") or []
    step = config.get("decoder_sparse_step", 1)
    if not isinstance(only, list) or not all(_is_count(x) for x in only):
        raise InputError(f"config.json: mlp_only_layers must be a list of layer indices, got {repr(only)[:60]}")
    if not _is_count(step) or step < 1:
        raise InputError(f"config.json: decoder_sparse_step must be a positive integer, got {repr(step)[:60]}")
    return i not in only and dims["experts"] > 0 and (i + 1) % step == 0


# Qwen2/3-MoE: experts on the sparse layers (stored one module each: transformers 5 fuses them in memory and saves
# them back per expert), llama's dense MLP on the others
QWEN_MOE_EXPERTS = (
    T(L + "mlp.gate.weight", "experts, hidden", layers="sparse"),
    T(L + "mlp.experts.{e}.gate_proj.weight", "moe_inter, hidden", layers="sparse"),
    T(L + "mlp.experts.{e}.up_proj.weight", "moe_inter, hidden", layers="sparse"),
    T(L + "mlp.experts.{e}.down_proj.weight", "hidden, moe_inter", layers="sparse"),
) + tuple(T(t.name, t.shape, t.need, layers="dense") for t in LLAMA_TENSORS if ".mlp." in t.name)
QWEN_MOE_DIMS = LLAMA_DIMS + (("experts", Dim(("num_experts", "num_local_experts"))),
                              ("moe_inter", Dim(("moe_intermediate_size",))))


def without_mlp(tensors: tuple[T, ...]) -> tuple[T, ...]:
    """A tensor table less its dense MLP (a mixture of experts takes its place)."""
    return tuple(t for t in tensors if ".mlp." not in t.name)


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


# mixture of experts: how many, and how many each token uses
EXPERT_KEYS = ("num_local_experts", "num_experts")  # Mixtral's, Qwen-MoE's (5.x saves qwen3_moe's as the first)
MOE = (
    Hparam("expert_count", "u32", first_of(EXPERT_KEYS)),
    Hparam("expert_used_count", "u32", get("num_experts_per_tok")),
)


def refuse_dense_layers(gguf_arch: str) -> Callable[[Config, int], str | None]:
    """Qwen-MoE layers without experts (mlp_only_layers, decoder_sparse_step > 1): llama.cpp's graphs have none."""
    def check(c: Config, d: int) -> str | None:
        if c.get("mlp_only_layers") or c.get("decoder_sparse_step", 1) != 1:
            return (f"dense layers (mlp_only_layers {c.get('mlp_only_layers')}, decoder_sparse_step "
                    f"{c.get('decoder_sparse_step', 1)}): llama.cpp's {gguf_arch} gives every layer experts")
        return None
    return check


def refuse_attention_bias(gguf_arch: str) -> Callable[[Config, int], str | None]:
    return lambda c, d: (f"attention_bias: llama.cpp's {gguf_arch} graph has no output-projection bias"
                         if c.get("attention_bias") else None)


def refuse_head_dim_not_hidden_over_heads(gguf_arch: str) -> Callable[[Config, int], str | None]:
    """llama.cpp loaders that take head_dim as hidden_size / num_attention_heads (no key_length of their own)."""
    def check(c: Config, d: int) -> str | None:
        if isinstance(c.get("hidden_size"), int) and isinstance(c.get("num_attention_heads"), int) \
                and d != c["hidden_size"] // c["num_attention_heads"]:
            return f"head_dim {d} ≠ hidden_size/num_attention_heads: llama.cpp's {gguf_arch} takes heads that wide"
        return None
    return check


# ------------------------------------------------------------------------------------------------ ONNX

def attn_config_value(cfg: Any, key: str) -> Any:
    """attn_config.<key> of a transformers config object (MPT's, where it is an object, not a dict); None for a
    config without one."""
    return getattr(getattr(cfg, "attn_config", None), key, None)


# transformers' LlamaConfig defaults of the keys the exporters read (Family.config_defaults)
LLAMA_CONFIG: tuple[tuple[str, Any], ...] = (("hidden_act", "silu"), ("rms_norm_eps", 1e-6))
LLAMA_ONNX: dict[str, Any] = dict(
    embed="model.embed_tokens.weight", layer="model.layers.{i}.", final_norm="model.norm", lm_head="lm_head.weight",
    norm="rms", eps_key="rms_norm_eps", attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), qkv_split="separate",
    o_proj="self_attn.o_proj", mlp=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), mlp_kind="gated",
)
GEMMA_ONNX: dict[str, Any] = dict(LLAMA_ONNX, norm="rms_plus_one", embed_scale=True)
GEMMA_CONFIG: tuple[tuple[str, Any], ...] = (("hidden_act", "gelu_pytorch_tanh"), ("rms_norm_eps", 1e-6))


def _qwen_layer_types(c: Any) -> list[str]:
    return ["sliding_attention" if c.use_sliding_window and c.sliding_window is not None and i >= c.max_window_layers
            else "full_attention" for i in range(c.num_hidden_layers)]


# Qwen2Config / Qwen3Config: a window only with use_sliding_window, on the layers from max_window_layers on
QWEN_CONFIG: tuple[tuple[str, Any], ...] = LLAMA_CONFIG + (
    ("use_sliding_window", False), ("sliding_window", 4096), ("max_window_layers", 28),
    ("layer_types", _qwen_layer_types))

# Qwen2/3-MoE's experts in the ONNX graph (qwen2_moe adds its shared expert)
QWEN_MOE_ONNX: dict[str, Any] = dict(
    router="mlp.gate.weight", count_keys=("num_experts", "num_local_experts"),
    experts=tuple(f"mlp.experts.{{e}}.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")),
    norm_topk_key="norm_topk_prob")

# -------------------------------------------------------------------------------------- config values
# (Family.values: the keys each family reads, typed as transformers 5's config classes annotate them)


def flag(key: str, null: bool = False) -> Value:
    return Value(key, BOOL, null=null)


def eps(key: str) -> Value:
    return Value(key, FLOAT, above=0.0, why="a norm's epsilon: llama.cpp asserts eps ≥ 0 (the process aborts), and 0 "
                                              "divides a zero row by zero")


def context(key: str, null: bool = False) -> Value:
    return Value(key, INT, least=MIN_CONTEXT, null=null,
                 why=f"the original context: ropeconv's shortest probe is {MIN_CONTEXT} tokens, and below 2π YaRN's "
                     "correction range turns negative, where llama.cpp and transformers differ")


def softcap(key: str) -> Value:
    return Value(key, FLOAT, above=0.0, null=True, why="a soft-cap divides by it")


ACTIVATION = Value("hidden_act", STR)
# transformers' sliding-window cache keeps the last sliding_window − 1 keys: at 1 that is the slice [-0:], every key
SLIDING_WINDOW = Value("sliding_window", INT, least=2, null=True,
                       why="transformers' sliding-window cache keeps the last sliding_window − 1 keys, and at 1 keeps "
                           "them all (measured: GGUF and ONNX off by 5.5 in their own verify)")
LAYER_TYPES = Value("layer_types", STR, null=True, per_layer=True, choices=("full_attention", "sliding_attention"))
RMS_VALUES = (ACTIVATION, eps("rms_norm_eps"), context("max_position_embeddings"))
# the Qwen and SmolLM3 classes use the window only with use_sliding_window
SWITCHED_WINDOW = (flag("use_sliding_window"), replace(SLIDING_WINDOW, only_if="use_sliding_window"))
QWEN_WINDOWS = SWITCHED_WINDOW + (Value("max_window_layers", INT, least=0), LAYER_TYPES)
MOE_VALUES = (
    Value("num_experts_per_tok", INT, least=1, at_most="experts",
          why="the experts each token uses: llama.cpp asserts 0 < expert_used_count ≤ expert_count"),
)
QWEN_MOE_VALUES = MOE_VALUES + (
    flag("norm_topk_prob"), Value("decoder_sparse_step", INT, least=1), Value("mlp_only_layers", INT, least=0,
                                                                               null=True, listed=True),
)
GEMMA2_VALUES = (Value("hidden_activation", STR), eps("rms_norm_eps"), context("max_position_embeddings"),
                 flag("attention_bias"), flag("use_bidirectional_attention", null=True),
                 Value("query_pre_attn_scalar", INT, least=1, why="queries are scaled by its inverse square root"),
                 SLIDING_WINDOW, LAYER_TYPES, softcap("final_logit_softcapping"), softcap("attn_logit_softcapping"))

# ------------------------------------------------------------------------------------------------ tests

# the tiny test model of a llama-shaped family (4 query heads sharing 2 key/value heads)
TINY_LLAMA: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
