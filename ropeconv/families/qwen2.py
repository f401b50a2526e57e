"""Qwen2: llama's blocks with q/k/v biases, sliding window on the layers `layer_types` marks "sliding_attention"."""

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
)
from ropeconv.families.spec import ArchSpec, Family, FamilyShapes, GgufArchSpec, GgufLayout, OnnxLayout

FAMILY = Family(
    arch=ArchSpec("qwen2"),
    shapes=FamilyShapes("qwen2", LLAMA_DIMS, LLAMA_TENSORS, GQA),
    tiny=TINY_LLAMA,
    gguf=GgufLayout("qwen2", "qwen2", COMMON + RMS, ("silu",), no_sliding_window=True),
    gguf_arch=GgufArchSpec("qwen2"),
    onnx=OnnxLayout("qwen2", **LLAMA_ONNX),
    genai_type="qwen2",
    values=RMS_VALUES + QWEN_WINDOWS,
    config_defaults=QWEN_CONFIG,
)
