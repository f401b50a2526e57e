"""The output formats and the names of their types, without the exporters.

Its own module so that `ropeconv methods`, `extend --help` and an extend that writes only safetensors read
them without importing the exporters (numpy, gguf-py and the rest: ~0.3 s here).
"""

from __future__ import annotations

from pathlib import Path

FORMATS = ("safetensors", "gguf", "onnx")  # the matrix's columns

GGUF_OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # --outtype written by ropeconv (gguf_export.convert.OUTTYPES)
# llama-quantize's names (QUANT_OPTIONS), lower case; each maps to llama.cpp's LLAMA_FTYPE_MOSTLY_<NAME>
GGUF_QUANT_TYPES = (
    "q4_0", "q4_1", "q5_0", "q5_1",
    "q2_k", "q2_k_s", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
    "iq4_nl", "iq4_xs", "iq3_xxs", "iq3_xs", "iq3_s", "iq3_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m",
    "iq1_s", "iq1_m",
)  # fmt: skip
GGUF_ALL_OUTTYPES = GGUF_OUTTYPES + GGUF_QUANT_TYPES  # the rest: quantized by llama.cpp

ONNX_DTYPES = ("fp32", "fp16", "int4")
ONNX_DIR = "onnx"  # the ONNX decoder's folder inside an output directory
ONNX_MODEL_FILE = "model.onnx"


def is_gguf(path: Path) -> bool:
    """A GGUF base is retrofitted, anything else is read as a HuggingFace directory."""
    return Path(path).suffix == ".gguf"
