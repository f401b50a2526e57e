"""How each HuggingFace family is laid out in llama.cpp's GGUF, as data.

Tensor names come from gguf-py's own TensorNameMap for the GGUF architecture; this table holds only
what the name map cannot: the hyperparameter keys the llama.cpp loader reads, and the few tensor
rewrites its compute graph needs. Facts from the llama.cpp that llama-cpp-python vendors
(src/models/<arch>.cpp and the matching conversion/<family>.py):

- llama: rope is applied to interleaved pairs (GGML_ROPE_TYPE_NORM) while transformers rotates the
  two halves of each head, so q/k rows are permuted within each head to keep the same math;
- gptneox: transformers stores query_key_value per head as [q_h, k_h, v_h]; llama.cpp splits the
  fused matrix into all-q, all-k, all-v blocks;
- gemma/gemma2: transformers' RMSNorm multiplies by (1 + w); llama.cpp multiplies by w, so norm
  weights are stored as 1 + w; the output projection is always the token embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gguf import MODEL_ARCH

from ropeconv.errors import UnsupportedError

Config = dict[str, Any]


@dataclass(frozen=True)
class Hparam:
    key: str  # relative to the architecture, e.g. "attention.head_count"
    kind: str  # "u32", "f32" or "bool"
    value: Callable[[Config], Any]  # from config.json; None omits the key
    # (head_dim, rotary_dim, vocab and lengths come from the scheme and plan, not from here)


def _get(name: str, default: Any = None) -> Callable[[Config], Any]:
    return lambda c: c.get(name, default)


def _heads_kv(c: Config) -> Any:
    return c.get("num_key_value_heads") or c.get("num_attention_heads")


COMMON = (
    Hparam("embedding_length", "u32", _get("hidden_size")),
    Hparam("block_count", "u32", _get("num_hidden_layers")),
    Hparam("feed_forward_length", "u32", _get("intermediate_size")),
    Hparam("attention.head_count", "u32", _get("num_attention_heads")),
)
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


LAYOUTS: dict[str, GgufLayout] = {
    layout.model_type: layout
    for layout in (
        GgufLayout("llama", MODEL_ARCH.LLAMA, COMMON + RMS, ("silu",), permute_qk=True),
        GgufLayout("mistral", MODEL_ARCH.LLAMA, COMMON + RMS, ("silu",), permute_qk=True, no_sliding_window=True),
        GgufLayout("qwen2", MODEL_ARCH.QWEN2, COMMON + RMS, ("silu",), no_sliding_window=True),
        GgufLayout("phi3", MODEL_ARCH.PHI3, COMMON + RMS, ("silu",), no_sliding_window=True),
        GgufLayout(
            "gpt_neox", MODEL_ARCH.GPTNEOX,
            COMMON + (
                Hparam("use_parallel_residual", "bool", _get("use_parallel_residual", True)),
                Hparam("attention.layer_norm_epsilon", "f32", _get("layer_norm_eps", 1e-5)),
            ),
            ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"), qkv_per_head=True,
        ),
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
    )
}


def layout_for(model_type: str) -> GgufLayout:
    try:
        return LAYOUTS[model_type]
    except KeyError:
        raise UnsupportedError(
            f"{model_type} cannot be written as GGUF yet (supported: {', '.join(sorted(LAYOUTS))}); use --to safetensors"
        ) from None


def check_graph(layout: GgufLayout, config: Config, head_dim: int, target_ctx: int) -> None:
    """Refuse configs whose transformers forward pass llama.cpp's graph for the arch does not compute."""
    act = config.get("hidden_act") or config.get("hidden_activation") or layout.activation[0]
    if act not in layout.activation:
        raise UnsupportedError(f"{layout.model_type} with hidden_act {act!r}: llama.cpp's {layout.arch.name.lower()} "
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
    if layout.output_is_embedding and not config.get("tie_word_embeddings", True):
        raise UnsupportedError(f"{layout.model_type} with untied lm_head: llama.cpp always uses the token embedding "
                               "as the output matrix; use --to safetensors")
