"""Gemma: transformers' RMSNorm multiplies by (1 + w) and llama.cpp's by w, so the GGUF stores norm weights as
1 + w; embeddings multiplied by sqrt(hidden), GeGLU MLP; llama.cpp's output projection is always the token
embedding (an untied lm_head is refused there)."""

from ropeconv.families.parts import (
    COMMON,
    GEMMA_CONFIG,
    GEMMA_ONNX,
    GQA,
    LLAMA_DIMS,
    LLAMA_TENSORS,
    RMS,
    RMS_VALUES,
    TINY_LLAMA,
    flag,
    with_head_dim_default,
)
from ropeconv.families.spec import ArchSpec, Family, FamilyShapes, GgufArchSpec, GgufLayout, OnnxLayout

FAMILY = Family(
    arch=ArchSpec("gemma", default_head_dim=256),
    shapes=FamilyShapes("gemma", with_head_dim_default(LLAMA_DIMS, "256"), LLAMA_TENSORS, GQA, tied_default=True),
    tiny=dict(TINY_LLAMA, head_dim=16),
    gguf=GgufLayout("gemma", "gemma", COMMON + RMS, ("gelu_pytorch_tanh", "gelu"), norm_plus_one=True,
                    output_is_embedding=True, always_key_length=True),
    gguf_arch=GgufArchSpec("gemma"),
    onnx=OnnxLayout("gemma", **GEMMA_ONNX),
    genai_type="gemma",
    values=RMS_VALUES + (flag("attention_bias"), flag("use_bidirectional_attention", null=True)),
    config_defaults=GEMMA_CONFIG,
)
