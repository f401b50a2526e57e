"""Mistral: llama's blocks, attending through `sliding_window` on every layer when it is set. llama.cpp loads it
as its llama architecture, whose graph has no sliding window: a window shorter than the target is refused there."""

from ropeconv.families.parts import (
    COMMON,
    GQA,
    LLAMA_CONFIG,
    LLAMA_DIMS,
    LLAMA_ONNX,
    LLAMA_TENSORS,
    RMS,
    RMS_VALUES,
    SLIDING_WINDOW,
    TINY_LLAMA,
)
from ropeconv.families.spec import ArchSpec, Family, FamilyShapes, GgufLayout, OnnxLayout

FAMILY = Family(
    arch=ArchSpec("mistral"),
    shapes=FamilyShapes("mistral", LLAMA_DIMS, LLAMA_TENSORS, GQA),
    tiny=dict(TINY_LLAMA, sliding_window=None),
    gguf=GgufLayout("mistral", "llama", COMMON + RMS, ("silu",), permute_qk=True, no_sliding_window=True),
    onnx=OnnxLayout("mistral", **LLAMA_ONNX, sliding_all_layers=True),
    genai_type="mistral",
    values=RMS_VALUES + (SLIDING_WINDOW,),
    config_defaults=LLAMA_CONFIG + (("sliding_window", 4096),),
)
