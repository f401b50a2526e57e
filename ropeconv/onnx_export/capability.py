"""What the capability matrix says of ONNX: its column's note, and which families' cells it refuses (no ONNX layout).
Light: no onnx, no torch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def matrix_note() -> str:
    from ropeconv.families import ARCHS, GENAI_TYPES
    from ropeconv.families import ONNX_LAYOUTS as LAYOUTS

    no_genai = ", ".join(m for m in LAYOUTS if m not in GENAI_TYPES)
    rope = ", ".join(m for m in LAYOUTS if ARCHS[m].position == "rope")
    other = ", ".join(m for m in LAYOUTS if ARCHS[m].position != "rope")
    alibi = ", ".join(m for m in LAYOUTS if ARCHS[m].position == "alibi")
    return (
        f"a HF base ({rope}; and {other} for alibi, absolute and none) is exported as a decoder with KV cache "
        "(opset 18 + com.microsoft; --dtype fp32, fp16 compute, or int4 MatMulNBits weights by onnxruntime's "
        "quantizer) whose graph computes the plan itself, so every RoPE method is available on every RoPE "
        "architecture, phi3 included. Attention runs in onnxruntime's fused GroupQueryAttention kernel (memory "
        f"linear in the length) except on {alibi}, whose per-head ALiBi bias keeps plain-operator attention (n² "
        "scores per call). Parity-proven in onnxruntime on every "
        "architecture × method (tiny random models, prefill crossing the original context then decode steps "
        "through the cache, each cell also failing once the position math is reset) and on the real SmolLM2. "
        f"A genai_config.json is written for onnxruntime-genai, except for {no_genai}, which it has no model type for"
    )


def family_refusal(family: Any, method: Any, sample_plan: Callable[[], Any]) -> str | None:
    """The graph computes any plan itself: only a family without an ONNX layout is refused."""
    if family.onnx is None:
        return family.no_onnx or "no ONNX layout"
    return None
