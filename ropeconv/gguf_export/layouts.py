"""How each HuggingFace family is laid out in llama.cpp's GGUF, as data.

Tensor names come from gguf-py's own TensorNameMap for the GGUF architecture; this table holds only
what the name map cannot: the hyperparameter keys the llama.cpp loader reads, and the few tensor
rewrites its compute graph needs. Facts from the llama.cpp that llama-cpp-python vendors
(src/models/<arch>.cpp and the matching conversion/<family>.py):

- qwen3: q and k are RMS-normalized per head (attn_q_norm / attn_k_norm, [head_dim]) before rope, in
  transformers and in llama.cpp's graph alike; head_dim is explicit (written as key/value_length);
- olmo2: norms after attention and MLP only (attn_post_norm / ffn_post_norm), q/k norms over the whole
  projection ([heads·head_dim]); its loader takes head_dim as hidden/heads, no output-projection bias and
  always a separate output matrix;
- smollm3: llama's layout (q/k rows permuted), and no rope on layers il with (il + 1) % 4 == 0: llama.cpp
  fixes the step at 4 where transformers reads no_rope_layers; no output-projection or MLP biases;
- llama: rope is applied to interleaved pairs (GGML_ROPE_TYPE_NORM) while transformers rotates the
  two halves of each head, so q/k rows are permuted within each head to keep the same math;
- gptneox: transformers stores query_key_value per head as [q_h, k_h, v_h]; llama.cpp splits the
  fused matrix into all-q, all-k, all-v blocks;
- gemma/gemma2: transformers' RMSNorm multiplies by (1 + w); llama.cpp multiplies by w, so norm
  weights are stored as 1 + w; the output projection is always the token embedding;
- bloom: ALiBi (slopes fixed by llama.cpp at max_alibi_bias 8, no rope keys); query_key_value per head
  like gptneox, bias included; word_embeddings_layernorm is token_embd_norm;
- mpt: ALiBi with max_alibi_bias read from the file (without it llama.cpp applies no bias at all);
  Wqkv is already [q|k|v]; clip_qkv is clamp_kqv; transformers' MPT has no biases and a 4×d_model FFN;
- gpt2: a learned position table (position_embd, exactly context_length rows); Conv1D weights are stored
  [in, out] and llama.cpp takes nn.Linear's [out, in].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gguf import MODEL_ARCH

from ropeconv.errors import UnsupportedError
from ropeconv.gguf_export import gemma3

Config = dict[str, Any]


@dataclass(frozen=True)
class Hparam:
    key: str  # relative to the architecture, e.g. "attention.head_count"
    kind: str  # "u32", "f32" or "bool"
    value: Callable[[Config], Any]  # from config.json; None omits the key
    # (head_dim, rotary_dim, vocab and lengths come from the scheme and plan, not from here)


def _get(name: str, default: Any = None) -> Callable[[Config], Any]:
    return lambda c: c.get(name, default)


# the same hyperparameter under each family's config.json name (GPT-2: n_embd, MPT: d_model, BLOOM: n_head …)
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "n_embed")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers")
HEAD_KEYS = ("num_attention_heads", "n_head", "n_heads")


def first(config: Config, keys: tuple[str, ...]) -> Any:
    return next((config[k] for k in keys if config.get(k) is not None), None)


def _first(keys: tuple[str, ...]) -> Callable[[Config], Any]:
    return lambda c: first(c, keys)


def _heads_kv(c: Config) -> Any:
    return c.get("num_key_value_heads") or c.get("num_attention_heads")


def _times_hidden(n: int) -> Callable[[Config], Any]:
    return lambda c: n * first(c, HIDDEN_KEYS) if isinstance(first(c, HIDDEN_KEYS), int) else None


def _attn(name: str, default: Any = None) -> Callable[[Config], Any]:
    return lambda c: (c.get("attn_config") or {}).get(name, default)


SHAPE = (
    Hparam("embedding_length", "u32", _first(HIDDEN_KEYS)),
    Hparam("block_count", "u32", _first(LAYER_KEYS)),
    Hparam("attention.head_count", "u32", _first(HEAD_KEYS)),
)
COMMON = SHAPE + (Hparam("feed_forward_length", "u32", _get("intermediate_size")),)
LAYER_NORM = (Hparam("attention.layer_norm_epsilon", "f32", _get("layer_norm_epsilon", 1e-5)),)
# BLOOM's loader hard-codes 8 and MPT's reads it (absent: no ALiBi at all); both use 8 in transformers
ALIBI = (Hparam("attention.max_alibi_bias", "f32", _attn("alibi_bias_max", 8.0)),)
RMS = (
    Hparam("attention.head_count_kv", "u32", _heads_kv),
    Hparam("attention.layer_norm_rms_epsilon", "f32", _get("rms_norm_eps", 1e-6)),
)


@dataclass(frozen=True)
class GgufLayout:
    model_type: str  # transformers model_type
    arch: MODEL_ARCH  # GGUF architecture (gguf-py enum; its name table gives the tensor names)
    hparams: tuple[Hparam, ...]
    activation: tuple[str, ...]  # HF hidden_act values llama.cpp's graph computes for this arch
    permute_qk: bool = False  # llama: interleaved rope pairs
    qkv_per_head: bool = False  # gptneox: fused qkv stored per head in HF
    norm_plus_one: bool = False  # gemma: RMSNorm scale stored as 1 + w
    output_is_embedding: bool = False  # gemma: llama.cpp has no separate output matrix
    always_key_length: bool = False  # gemma: write attention.key/value_length even when default
    # transformers applies a sliding window here and llama.cpp's graph for the arch has none
    no_sliding_window: bool = False
    conv1d: bool = False  # gpt2: Conv1D weights stored [in, out], llama.cpp takes [out, in]
    skip: tuple[str, ...] = ()  # name suffixes of checkpoint buffers the GGUF does not hold
    act_keys: tuple[str, ...] = ("hidden_act", "hidden_activation")  # where config.json names the activation


LAYOUTS: dict[str, GgufLayout] = {
    layout.model_type: layout
    for layout in (
        GgufLayout("llama", MODEL_ARCH.LLAMA, COMMON + RMS, ("silu",), permute_qk=True),
        GgufLayout("mistral", MODEL_ARCH.LLAMA, COMMON + RMS, ("silu",), permute_qk=True, no_sliding_window=True),
        GgufLayout("qwen2", MODEL_ARCH.QWEN2, COMMON + RMS, ("silu",), no_sliding_window=True),
        # q/k norms per head (attn_q_norm/attn_k_norm, [head_dim]) before rope, as llama.cpp's qwen3 graph
        GgufLayout("qwen3", MODEL_ARCH.QWEN3, COMMON + RMS, ("silu",), no_sliding_window=True,
                   always_key_length=True),
        GgufLayout("phi3", MODEL_ARCH.PHI3, COMMON + RMS, ("silu",), no_sliding_window=True),
        GgufLayout(
            "gpt_neox", MODEL_ARCH.GPTNEOX,
            COMMON + (
                Hparam("use_parallel_residual", "bool", _get("use_parallel_residual", True)),
                Hparam("attention.layer_norm_epsilon", "f32", _get("layer_norm_eps", 1e-5)),
            ),
            ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"), qkv_per_head=True,
        ),
        # post_attention_layernorm is attn_post_norm here (no attn_norm/ffn_norm); q/k norms over the projection
        GgufLayout("olmo2", MODEL_ARCH.OLMO2, COMMON + RMS, ("silu",)),
        # llama's interleaved rope pairs; no rope on every 4th layer, fixed in llama.cpp (see _smollm3_no_rope)
        GgufLayout("smollm3", MODEL_ARCH.SMOLLM3, COMMON + RMS, ("silu",), permute_qk=True, no_sliding_window=True),
        GgufLayout("gemma", MODEL_ARCH.GEMMA, COMMON + RMS, ("gelu_pytorch_tanh", "gelu"), norm_plus_one=True,
                   output_is_embedding=True, always_key_length=True),
        GgufLayout(
            "gemma2", MODEL_ARCH.GEMMA2,
            COMMON + RMS + (
                Hparam("attn_logit_softcapping", "f32", _get("attn_logit_softcapping")),
                Hparam("final_logit_softcapping", "f32", _get("final_logit_softcapping")),
                Hparam("attention.sliding_window", "u32", _get("sliding_window")),
            ),
            ("gelu_pytorch_tanh", "gelu"), norm_plus_one=True, output_is_embedding=True, always_key_length=True,
        ),
        # --- gemma3 ---
        # sliding layers at rope.freq_base_swa with scale 1, the others at rope.freq_base with the method
        GgufLayout(
            "gemma3_text", MODEL_ARCH.GEMMA3,
            COMMON + RMS + (
                Hparam("final_logit_softcapping", "f32", _get("final_logit_softcapping")),
                Hparam("attention.sliding_window", "u32", _get("sliding_window")),
                Hparam("attention.sliding_window_pattern", "u32", lambda c: gemma3.swa_pattern(c)),
                Hparam("rope.freq_base_swa", "f32", lambda c: gemma3.local_base(c)),
            ),
            ("gelu_pytorch_tanh",), norm_plus_one=True, always_key_length=True,
        ),
        # --- end gemma3 ---
        # llama.cpp computes GELU with the tanh approximation; bloom_gelu and gelu_new are that formula
        GgufLayout("bloom", MODEL_ARCH.BLOOM, SHAPE + (Hparam("feed_forward_length", "u32", _times_hidden(4)),)
                   + LAYER_NORM + ALIBI, ("gelu",), qkv_per_head=True),
        GgufLayout(
            "mpt", MODEL_ARCH.MPT,
            SHAPE + (
                Hparam("feed_forward_length", "u32", _times_hidden(4)),
                Hparam("attention.clamp_kqv", "f32", _attn("clip_qkv")),
            ) + LAYER_NORM + ALIBI,
            ("gelu",),  # transformers' MPT: exact GELU, whatever the config says
        ),
        GgufLayout(
            "gpt2", MODEL_ARCH.GPT2,
            SHAPE + (Hparam("feed_forward_length", "u32", lambda c: c.get("n_inner") or _times_hidden(4)(c)),)
            + LAYER_NORM,
            ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"), conv1d=True, skip=(".attn.bias", ".attn.masked_bias"),
            act_keys=("activation_function",),
        ),
    )
}
# transformers families llama.cpp has no graph for, and what to use instead
NO_GGUF = {
    "opt": "llama.cpp has no OPT architecture (its learned position table with 2 leading rows and ReLU FFN "
           "match none of llama.cpp's graphs); use --to onnx or --to safetensors",
}


def layout_for(model_type: str) -> GgufLayout:
    if model_type in NO_GGUF:
        raise UnsupportedError(f"{model_type} cannot be written as GGUF: {NO_GGUF[model_type]}")
    try:
        return LAYOUTS[model_type]
    except KeyError:
        raise UnsupportedError(
            f"{model_type} cannot be written as GGUF yet (supported: {', '.join(sorted(LAYOUTS))}); use --to safetensors"
        ) from None


def check_graph(layout: GgufLayout, config: Config, head_dim: int, target_ctx: int) -> None:
    """Refuse configs whose transformers forward pass llama.cpp's graph for the arch does not compute."""
    key = next((k for k in layout.act_keys if config.get(k)), layout.act_keys[0])
    act = config.get(key) or layout.activation[0]
    if act not in layout.activation:
        raise UnsupportedError(f"{layout.model_type} with {key} {act!r}: llama.cpp's {layout.arch.name.lower()} "
                               f"graph computes {layout.activation[0]}; use --to safetensors")
    window = config.get("sliding_window")
    if layout.no_sliding_window and config.get("use_sliding_window", True) and isinstance(window, int) \
            and window < target_ctx:
        raise UnsupportedError(
            f"{layout.model_type} attends through a sliding window of {window} tokens in transformers, and "
            f"llama.cpp's graph for it has none, so beyond {window} tokens the GGUF would compute another model; "
            "use --to safetensors"
        )
    if layout.model_type == "gemma2":
        # llama.cpp scales queries by 1/sqrt(head_dim) (except for its 46-layer 27B)
        scalar = config.get("query_pre_attn_scalar", head_dim)
        if scalar != head_dim and config.get("num_hidden_layers") != 46:
            raise UnsupportedError(f"gemma2 with query_pre_attn_scalar {scalar} ≠ head_dim {head_dim}: llama.cpp "
                                   "scales queries by 1/sqrt(head_dim); use --to safetensors")
    for refusal in _GRAPH_CHECKS.get(layout.model_type, ()):
        reason = refusal(config, head_dim)
        if reason:
            raise UnsupportedError(f"{layout.model_type} with {reason}; use --to safetensors")
    if layout.output_is_embedding and not config.get("tie_word_embeddings", True):
        raise UnsupportedError(f"{layout.model_type} with untied lm_head: llama.cpp always uses the token embedding "
                               "as the output matrix; use --to safetensors")


def _mpt_softmax_scale(config: Config, head_dim: int) -> str | None:
    scale = _attn("softmax_scale")(config)
    if scale is not None and abs(scale * head_dim ** 0.5 - 1) > 1e-6:
        return f"attn_config.softmax_scale {scale}: llama.cpp scales queries by 1/sqrt(head_dim)"
    return None


def _smollm3_no_rope(config: Config, head_dim: int) -> str | None:
    layers = config.get("num_hidden_layers")
    if not isinstance(layers, int):
        return None
    interval = config.get("no_rope_layer_interval", 4)
    declared = config.get("no_rope_layers")
    if declared is None and isinstance(interval, int) and interval > 0:  # transformers' SmolLM3Config default
        declared = [int((i + 1) % interval != 0) for i in range(layers)]
    fixed = [int((i + 1) % 4 != 0) for i in range(layers)]
    if declared is not None and [int(bool(x)) for x in declared] != fixed:
        return "no_rope_layers other than every 4th layer: llama.cpp's smollm3 drops rope on every 4th layer exactly"
    return None


# config switches transformers honours and llama.cpp's graph for the arch does not (reason, or None)
_GRAPH_CHECKS: dict[str, tuple[Callable[[Config, int], str | None], ...]] = {
    "olmo2": (
        lambda c, d: "attention_bias: llama.cpp's olmo2 graph has no output-projection bias"
        if c.get("attention_bias") else None,
        lambda c, d: "tied lm_head: llama.cpp's olmo2 reads a separate output matrix"
        if c.get("tie_word_embeddings") else None,
        lambda c, d: f"head_dim {d} ≠ hidden_size/num_attention_heads: llama.cpp's olmo2 takes heads that wide"
        if isinstance(c.get("hidden_size"), int) and isinstance(c.get("num_attention_heads"), int)
        and d != c["hidden_size"] // c["num_attention_heads"] else None,
    ),
    "smollm3": (
        _smollm3_no_rope,
        lambda c, d: "attention_bias: llama.cpp's smollm3 graph has no output-projection bias"
        if c.get("attention_bias") else None,
        lambda c, d: "mlp_bias: llama.cpp's smollm3 loads no MLP biases" if c.get("mlp_bias") else None,
    ),
    # --- gemma3 ---
    "gemma3_text": (lambda c, d: gemma3.gguf_refusal(c, d),),
    # --- end gemma3 ---
    "qwen3": (
        lambda c, d: "attention_bias: llama.cpp's qwen3 graph has no output-projection bias"
        if c.get("attention_bias") else None,
    ),
    "gpt2": (
        lambda c, d: None if c.get("scale_attn_weights", True) else
        "scale_attn_weights false: llama.cpp always scales attention by 1/sqrt(head_dim)",
        lambda c, d: "scale_attn_by_inverse_layer_idx: llama.cpp's gpt2 graph has no per-layer attention scale"
        if c.get("scale_attn_by_inverse_layer_idx") else None,
        lambda c, d: "add_cross_attention: llama.cpp's gpt2 is a decoder only" if c.get("add_cross_attention")
        else None,
    ),
    "bloom": (
        lambda c, d: "apply_residual_connection_post_layernorm: llama.cpp's bloom adds the residual before the norm"
        if c.get("apply_residual_connection_post_layernorm") else None,
    ),
    "mpt": (
        _mpt_softmax_scale,
        lambda c, d: "attn_config.qk_ln: transformers' MPT ignores it and llama.cpp applies it"
        if _attn("qk_ln")(c) else None,
        lambda c, d: None if c.get("no_bias", True) else
        "no_bias false: transformers' MPT drops the biases MosaicML's code adds, so the model is ambiguous",
    ),
}
