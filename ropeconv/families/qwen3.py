"""Qwen3: qwen2's blocks (no q/k/v bias by default) with q and k RMS-normalized over each head (self_attn.q_norm /
k_norm, weights [head_dim]) after the split into heads and before rope, in transformers and in llama.cpp's qwen3
graph alike (attn_q_norm / attn_k_norm); head_dim is explicit (Qwen3Config defaults it to 128), written to the
GGUF as key/value_length."""

from ropeconv.families.parts import (
    COMMON,
    GQA,
    LLAMA_DIMS,
    LLAMA_ONNX,
    LLAMA_TENSORS,
    QWEN_CONFIG,
    QWEN_WINDOWS,
    RMS,
    RMS_VALUES,
    TINY_LLAMA,
    L,
    flag,
    refuse_attention_bias,
    with_head_dim_default,
)
from ropeconv.families.spec import ArchSpec, Family, FamilyShapes, GgufArchSpec, GgufLayout, OnnxLayout, T

FAMILY = Family(
    arch=ArchSpec("qwen3", default_head_dim=128,
                  note="q and k RMS-normalized per head before rope (GGUF attn_q_norm/attn_k_norm, computed by the "
                       "ONNX graph); GGUF refused with attention_bias, since llama.cpp's qwen3 has no output-projection "
                       "bias"),
    shapes=FamilyShapes(
        "qwen3", with_head_dim_default(LLAMA_DIMS, "128"),
        LLAMA_TENSORS + (T(L + "self_attn.q_norm.weight", "head_dim"), T(L + "self_attn.k_norm.weight", "head_dim")),
        GQA,
    ),
    # head_dim 32 ≠ hidden/heads, as Qwen3's own (0.6B: 1024 hidden, 16 heads of 128)
    tiny=dict(TINY_LLAMA, head_dim=32),
    tiny_norm_range=(0.5, 1.5),
    gguf=GgufLayout("qwen3", "qwen3", COMMON + RMS, ("silu",), no_sliding_window=True, always_key_length=True),
    gguf_arch=GgufArchSpec("qwen3"),
    gguf_checks=(refuse_attention_bias("qwen3"),),
    onnx=OnnxLayout("qwen3", **LLAMA_ONNX, qk_norm=("self_attn.q_norm", "self_attn.k_norm"), qk_norm_per_head=True),
    genai_type="qwen3",
    values=RMS_VALUES + QWEN_WINDOWS + (flag("attention_bias"),),
    config_defaults=QWEN_CONFIG,
)
