"""The capability matrix (method × format), read from the method modules and the family records."""

from __future__ import annotations

import functools

from ropeconv import methods
from ropeconv.families import ARCHS
from ropeconv.formats import FORMATS
from ropeconv.methods.base import Cell, Support

_NOT_YET = Cell(Support.REFUSED, "no exporter for this format yet")


def _gguf_note() -> str:
    from ropeconv.families import GGUF_ARCHS
    from ropeconv.families import GGUF_LAYOUTS as LAYOUTS
    from ropeconv.formats import GGUF_OUTTYPES as OUTTYPES
    from ropeconv.formats import GGUF_QUANT_TYPES as QUANT_TYPES

    converted = ", ".join(f"{m} → {layout.arch}" for m, layout in LAYOUTS.items())
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
    from ropeconv.families import GENAI_TYPES
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


# ------------------------------------------------------------------------------------ per family

def family_cell(family: str, method: str, fmt: str) -> Cell:
    """The matrix's cell for one family: the method's own cell for the format, refused where the method does not
    act on the family's positions, the family has no layout for the format, or the family refuses what the method
    declares (a rope_type its transformers config rejects, a GGUF carrier llama.cpp's loader of its architecture
    does not read) — each found by running the exporters' own refusals on a plan the method makes for the family.
    The tests' parity matrices are generated from this (a cell claimed exact runs; a refused one is refused)."""
    from ropeconv.families import FAMILIES, GGUF_ARCHS

    fam, module = FAMILIES[family], methods.get(method)
    if fam.position not in methods.positions_of(module):
        return Cell(Support.REFUSED, f"{method} acts on {'/'.join(methods.positions_of(module))} positions; "
                                     f"{family} uses {fam.position}")
    cell = module.CELLS.get(fmt, _NOT_YET)
    if cell.support is Support.REFUSED:
        return cell
    if fmt == "gguf" and fam.gguf is None:
        return Cell(Support.REFUSED, fam.no_gguf or "no GGUF layout")
    if fmt == "onnx" and fam.onnx is None:
        return Cell(Support.REFUSED, fam.no_onnx or "no ONNX layout")
    if fam.position != "rope" or method == "none":
        return cell
    from ropeconv.errors import UnsupportedError

    plan = _sample_plan(family, method)
    if fmt == "safetensors":
        from ropeconv.export.hf_config import rope_type_refusal

        reason = rope_type_refusal(fam.arch, method, module.hf_rope_parameters(plan)["rope_type"])
        if reason:
            return Cell(Support.REFUSED, reason)
    if fmt == "gguf":
        try:
            module.gguf_declaration(plan, GGUF_ARCHS[fam.gguf.arch])
        except UnsupportedError as exc:
            return Cell(Support.REFUSED, str(exc))
    return cell


def family_cells(fmt: str, position: str | None = None) -> list[tuple[str, str]]:
    """Every (family, method) the matrix claims for the format (exact or via carrier), families in the matrix's
    order and methods in the papers' order; `position`: only families of that position scheme."""
    from ropeconv.families import FAMILIES

    return [(f, m.NAME) for f, fam in FAMILIES.items() if position in (None, fam.position)
            for m in methods.ordered() if family_cell(f, m.NAME, fmt).support is not Support.REFUSED]


@functools.cache
def _sample_plan(family: str, method: str):
    """The method's plan for a model of the family with 16 rotary pairs (head_dim 32 at the family's rotary fraction
    rounded to whole pairs), from 256 to 1024 tokens (llama.cpp's LongRoPE needs an original context of 256 or more),
    with its defaults: what a cell declares does not depend on the sizes, nor on the format (made once per pair)."""
    import json
    import tempfile
    from pathlib import Path

    from ropeconv.families import FAMILIES
    from ropeconv.methods.base import ExtendRequest
    from ropeconv.positions import RopeScheme

    fam, module = FAMILIES[family], methods.get(method)
    rotary = 2 * max(2, int(32 * fam.arch.default_partial) // 2)
    scheme = RopeScheme(theta=fam.arch.default_theta, head_dim=32, rotary_dim=rotary, original_ctx=256,
                        declared_ctx=256)
    if not any(o.name == "factors" for o in module.OPTIONS):
        return module.plan(scheme, ExtendRequest(factor=4.0))
    pairs = rotary // 2
    with tempfile.TemporaryDirectory() as tmp:
        factors = Path(tmp) / "factors.json"
        if module.NAME == "longrope":
            factors.write_text(json.dumps({"short_factor": [1.0] * pairs, "long_factor": [2.0] * pairs}))
        else:
            factors.write_text(json.dumps([1.0 + j / pairs for j in range(pairs)]))
        return module.plan(scheme, ExtendRequest(factor=4.0, options={"factors": str(factors)}))
