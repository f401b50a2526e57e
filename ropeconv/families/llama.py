"""Llama: pre-norm RMSNorm blocks, separate q/k/v projections, SwiGLU MLP. llama.cpp's llama graph applies rope to
interleaved pairs (GGML_ROPE_TYPE_NORM) while transformers rotates the two halves of each head, so the GGUF
permutes q/k rows within each head to keep the same math; its loader reads rope_freqs (a per-pair divisor) and,
with rope.scaling.type longrope, the LongRoPE factor tensors."""

from ropeconv.families.parts import (
    COMMON,
    GQA,
    LLAMA_CONFIG,
    LLAMA_DIMS,
    LLAMA_ONNX,
    LLAMA_TENSORS,
    RMS,
    RMS_VALUES,
    TINY_LLAMA,
    flag,
)
from ropeconv.families.spec import ArchSpec, Family, FamilyShapes, GgufArchSpec, GgufLayout, OnnxLayout

FAMILY = Family(
    arch=ArchSpec("llama"),
    shapes=FamilyShapes("llama", LLAMA_DIMS, LLAMA_TENSORS, GQA),
    tiny=TINY_LLAMA,
    gguf=GgufLayout("llama", "llama", COMMON + RMS, ("silu",), permute_qk=True),
    gguf_arch=GgufArchSpec("llama", reads_rope_freqs=True, longrope="typed"),
    onnx=OnnxLayout("llama", **LLAMA_ONNX),
    genai_type="llama",
    values=RMS_VALUES + (flag("attention_bias"), flag("mlp_bias")),
    config_defaults=LLAMA_CONFIG,
)
