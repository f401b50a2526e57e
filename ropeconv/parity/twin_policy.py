"""Each format's twin policy: which float32 twin a non-float32 artifact is judged through strictly (it also runs
as itself against the quantized limits), and the report's note saying so. Named by the formats' records
(formats.Format.quantized_twin, twin_note)."""

from __future__ import annotations

from pathlib import Path


def gguf_twin(artifact: Path, given):
    """Any non-f32 tensor: the twin converted from the base; from a GGUF base (no twin given), one dequantized
    from the file itself where it needs one."""
    from ropeconv.gguf_io.reader import read_gguf
    from ropeconv.gguf_io.types import GGMLQuantizationType
    from ropeconv.parity.f32_twin import needs_twin, write_f32_twin

    src = read_gguf(artifact)
    if given is not None:
        return given if any(t.ggml_type != GGMLQuantizationType.F32 for t in src.tensors) else None
    return (lambda dst: write_f32_twin(src, dst)) if needs_twin(src) else None


def gguf_note(artifact: Path, given) -> str:
    how = "converted from the base in float32" if given else "same metadata and carriers, tensors dequantized"
    return (f"llama.cpp ran a float32 twin of {Path(artifact).name} ({how}) for the strict check, and the file "
            "itself for the q- rows")


def _onnx_dtype(artifact: Path) -> str | None:
    from ropeconv.onnx_export.metadata import read_dtype

    return read_dtype(artifact)


def onnx_twin(artifact: Path, given):
    """float16 or int4: the float32 export of the same base and plan (none from a GGUF base)."""
    return None if given is None or (_onnx_dtype(artifact) or "fp32") == "fp32" else given


def onnx_note(artifact: Path, given) -> str:
    kind = {"fp16": "float16 compute", "int4": "int4 MatMulNBits weights"}.get(_onnx_dtype(artifact) or "",
                                                                                "not float32")
    return (f"onnxruntime ran a float32 export of the same base and plan for the strict check, and "
            f"{Path(artifact).name} ({kind}) for the q- rows")
