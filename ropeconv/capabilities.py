"""The capability matrix (method × format), read from the method modules and the family records."""

from __future__ import annotations

from ropeconv import methods
from ropeconv.families import ARCHS
from ropeconv.methods.base import Cell, Support
from ropeconv.formats import FORMATS

_NOT_YET = Cell(Support.REFUSED, "no exporter for this format yet")


def _gguf_note() -> str:
    from ropeconv.families import GGUF_ARCHS, GGUF_LAYOUTS as LAYOUTS
    from ropeconv.formats import GGUF_OUTTYPES as OUTTYPES, GGUF_QUANT_TYPES as QUANT_TYPES

    converted = ", ".join(f"{m} → {l.arch}" for m, l in LAYOUTS.items())
    freqs = ", ".join(a.name for a in GGUF_ARCHS.values() if a.reads_rope_freqs)
    longrope = ", ".join(a.name for a in GGUF_ARCHS.values() if a.longrope)
    return (
        f"a HF base is converted ({converted}; --outtype {'/'.join(OUTTYPES)} written by ropeconv, "
        f"{'/'.join(QUANT_TYPES)} by llama.cpp's own quantizer from that float conversion, --imatrix passed through; "
        "tokenizer from tokenizer.json or tokenizer.model), a GGUF base is retrofitted in place, its quantization "
        "untouched. rope_freqs carriers exist only "
        f"on {freqs} and LongRoPE tensors on {longrope}; elsewhere those cells are refused. Parity-proven in "
        "llama.cpp on every converted architecture (tiny random models, f32, each cell also failing once its "
        "declaration is stripped) and on the real SmolLM2 GGUF for retrofits"
    )


def _onnx_note() -> str:
    from ropeconv.families import GENAI_TYPES, ONNX_LAYOUTS as LAYOUTS

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


def _safetensors_note() -> str:
    eager = ", ".join(a.model_type for a in ARCHS.values() if a.hf4_attention == "eager")
    return (
        "config.json reads the same in transformers 5.x (rope_parameters) and 4.x (rope_theta + rope_scaling and the "
        "top-level keys 4.57 reads), and the tokenizer files load in both and in optimum. Parity-proven in both majors "
        "on every cell (tiny random models, 4.x run from a second environment, .venv-tf4: logits identical to 5.x; "
        f"LongRoPE without the top-level original length fails there). In 4.x, {eager} needs "
        "attn_implementation=\"eager\": 4.x's "
        "default sdpa drops its attention soft-capping, for the base as well"
    )


FORMAT_NOTES = {"safetensors": _safetensors_note(), "gguf": _gguf_note(), "onnx": _onnx_note()}


def matrix() -> list[dict]:
    rows = []
    for m in methods.ordered():
        cells = {f: m.CELLS.get(f, _NOT_YET) for f in FORMATS}
        positions = methods.positions_of(m)
        rows.append(
            {
                "method": m.NAME,
                "summary": m.SUMMARY,
                "positions": list(positions),
                "architectures": [a.model_type for a in ARCHS.values() if a.position in positions],
                "cells": {f: {"support": c.support.value, "how": c.how} for f, c in cells.items()},
            }
        )
    return rows


def arch_notes() -> list[str]:
    return [f"{a.model_type}: {a.note}" for a in ARCHS.values() if a.note]


def format_markdown() -> str:
    header = "| method | acts on | " + " | ".join(FORMATS) + " |"
    lines = [header, "|---|---|" + "---|" * len(FORMATS)]
    for row in matrix():
        cells = " | ".join(f"{c['support']} ({c['how']})" for c in row["cells"].values())
        acts = "all" if row["method"] == "none" else f"{'/'.join(row['positions'])}: {', '.join(row['architectures'])}"
        lines.append(f"| `{row['method']}` | {acts} | {cells} |")
    lines.append("")
    lines.extend(f"- {fmt} column: {note}" for fmt, note in FORMAT_NOTES.items())
    lines.append("")
    lines.append(f"Architectures: {', '.join(sorted(ARCHS))}.")
    lines.extend(f"- {n}" for n in arch_notes())
    return "\n".join(lines)
