"""The capability matrix (method × format), read from the method modules and the architecture table."""

from __future__ import annotations

from ropeconv import methods
from ropeconv.archs import ARCHS
from ropeconv.methods.base import Cell, Support
from ropeconv.pipeline import FORMATS

_NOT_YET = Cell(Support.REFUSED, "no exporter for this format yet")
FORMAT_NOTES = {
    "gguf": "from a GGUF base: an existing GGUF, quantized or not, retrofitted in place (HF → GGUF conversion "
    "is not available yet). Parity-proven in llama.cpp on the llama architecture (SmolLM2); the other GGUF "
    "architectures, including phi3's LongRoPE tensors, get the keys llama.cpp's source reads but no parity "
    "test yet",
}


def matrix() -> list[dict]:
    rows = []
    for m in methods.ordered():
        cells = {f: m.CELLS.get(f, _NOT_YET) for f in FORMATS}
        rows.append(
            {
                "method": m.NAME,
                "summary": m.SUMMARY,
                "cells": {f: {"support": c.support.value, "how": c.how} for f, c in cells.items()},
            }
        )
    return rows


def arch_notes() -> list[str]:
    return [f"{a.model_type}: {a.note}" for a in ARCHS.values() if a.note]


def format_markdown() -> str:
    header = "| method | " + " | ".join(FORMATS) + " |"
    lines = [header, "|---|" + "---|" * len(FORMATS)]
    for row in matrix():
        cells = " | ".join(f"{c['support']} ({c['how']})" for c in row["cells"].values())
        lines.append(f"| `{row['method']}` | {cells} |")
    lines.append("")
    lines.extend(f"- {fmt} column: {note}" for fmt, note in FORMAT_NOTES.items())
    lines.append("")
    lines.append(f"Architectures: {', '.join(sorted(ARCHS))}.")
    lines.extend(f"- {n}" for n in arch_notes())
    return "\n".join(lines)
