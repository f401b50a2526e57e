"""A float32 twin of a quantized GGUF: the same metadata, every tensor dequantized.

llama.cpp multiplies quantized weights by activations rounded to 8 bits, so a Q4 file differs from
its dequantized self in transformers by max|Δlogit| 1–5 even when the rope is exactly right — noise
that hides rope errors under ~1%. The twin carries the artifact's exact position metadata and carrier
tensors over weights that transformers' dequantization reproduces, so llama.cpp on the twin proves
the metadata to the strict fp32 tolerance; the quantized tensors themselves are byte copies of the
base's (the manifest's hashes and the retrofit tests show that).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as GgufQuantType
from gguf.quants import dequantize

from ropeconv.gguf_io.reader import GgufFile
from ropeconv.gguf_io.types import GGMLQuantizationType, GGUFValueType
from ropeconv.gguf_io.writer import GgufWriter, NewField, TensorInfo, effective_alignment

FLOAT_TYPES = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}
ALL_F32 = 0  # gguf.LlamaFileType.ALL_F32


def needs_twin(src: GgufFile) -> bool:
    return any(t.ggml_type not in FLOAT_TYPES for t in src.tensors)


def write_f32_twin(src: GgufFile, dst: Path) -> Path:
    """One tensor in memory at a time."""
    fields = [
        NewField("general.file_type", GGUFValueType.UINT32, ALL_F32) if f.key == "general.file_type" else f
        for f in src.fields
    ]
    infos = [TensorInfo(t.name, t.shape, GGMLQuantizationType.F32, 4 * int(np.prod(t.shape))) for t in src.tensors]
    fd = os.open(src.path, os.O_RDONLY)
    try:
        with GgufWriter(dst, fields, infos, effective_alignment(fields)) as writer:
            for t in src.tensors:
                raw = np.frombuffer(os.pread(fd, t.nbytes, t.offset), dtype=np.uint8)
                writer.write_tensor(t.name, _to_f32(raw, t.ggml_type, t.torch_shape))
    finally:
        os.close(fd)
    return dst


def _to_f32(raw: np.ndarray, ggml_type: GGMLQuantizationType, torch_shape: tuple[int, ...]) -> np.ndarray:
    if ggml_type == GGMLQuantizationType.F32:
        return raw.view(np.float32).reshape(torch_shape)
    if ggml_type == GGMLQuantizationType.F16:
        return raw.view(np.float16).astype(np.float32).reshape(torch_shape)
    rows = raw.reshape(*torch_shape[:-1], -1)  # dequantize takes one row of blocks per last axis
    # gguf-py's member of the same code (the two enums' members compare and hash alike)
    return np.ascontiguousarray(dequantize(rows, GgufQuantType(ggml_type)), dtype=np.float32).reshape(torch_shape)

