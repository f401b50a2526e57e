"""Gemma 2: gemma's blocks plus post-attention / pre- and post-feed-forward norms, tanh soft-capping of attention
and final logits, queries scaled by query_pre_attn_scalar^-1/2, sliding window on the layers `layer_types` marks
"sliding_attention". llama.cpp scales queries by 1/sqrt(head_dim) (except for its 46-layer 27B)."""

from ropeconv.families.parts import (
    COMMON,
    GEMMA2_VALUES,
    GEMMA_ONNX,
    GQA,
    LLAMA_DIMS,
    LLAMA_TENSORS,
    RMS,
    TINY_LLAMA,
    L,
    norm,
    with_head_dim_default,
)
from ropeconv.families.spec import (
    ArchSpec,
    Family,
    FamilyShapes,
    GgufArchSpec,
    GgufLayout,
    Hparam,
    OnnxLayout,
    get,
    pattern_layer_types,
)


def _query_scalar_is_head_dim(config, head_dim):
    scalar = config.get("query_pre_attn_scalar", head_dim)
    if scalar != head_dim and config.get("num_hidden_layers") != 46:
        return f"query_pre_attn_scalar {scalar} ≠ head_dim {head_dim}: llama.cpp scales queries by 1/sqrt(head_dim)"
    return None


# Gemma2Config's defaults; it derives layer_types as every other layer sliding, from the first
_CONFIG = (
    ("hidden_activation", "gelu_pytorch_tanh"), ("rms_norm_eps", 1e-6), ("query_pre_attn_scalar", 256),
    ("attn_logit_softcapping", 50.0), ("final_logit_softcapping", 30.0), ("sliding_window", 4096),
    ("layer_types", lambda c: pattern_layer_types(c.num_hidden_layers, 2)),
)


FAMILY = Family(
    # 4.x's default sdpa path drops Gemma-2's attention soft-capping (the base's too); its eager path keeps it
    arch=ArchSpec("gemma2", default_head_dim=256, hf4_attention="eager"),
    shapes=FamilyShapes(
        "gemma2", with_head_dim_default(LLAMA_DIMS, "256"),
        LLAMA_TENSORS + norm(L + "pre_feedforward_layernorm") + norm(L + "post_feedforward_layernorm"),
        GQA, tied_default=True,
    ),
    tiny=dict(TINY_LLAMA, head_dim=16, sliding_window=4096, query_pre_attn_scalar=16),
    gguf=GgufLayout(
        "gemma2", "gemma2",
        COMMON + RMS + (
            Hparam("attn_logit_softcapping", "f32", get("attn_logit_softcapping")),
            Hparam("final_logit_softcapping", "f32", get("final_logit_softcapping")),
            Hparam("attention.sliding_window", "u32", get("sliding_window")),
        ),
        ("gelu_pytorch_tanh", "gelu"), norm_plus_one=True, output_is_embedding=True, always_key_length=True,
    ),
    gguf_arch=GgufArchSpec("gemma2"),
    gguf_checks=(_query_scalar_is_head_dim,),
    onnx=OnnxLayout("gemma2", **dict(GEMMA_ONNX, mlp_norm="pre_feedforward_layernorm",
                                     activation_key="hidden_activation"),
                    post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
                    query_scalar_key="query_pre_attn_scalar", softcaps=True),
    genai_type="gemma2",
    values=GEMMA2_VALUES,
    config_defaults=_CONFIG,
)
