"""What the capability matrix says of GGUF: its column's note, and which families' cells it refuses (no GGUF layout,
or a declaration llama.cpp's loader of the family's architecture does not read). Light: no numpy, no gguf-py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def matrix_note() -> str:
    from ropeconv.families import GGUF_ARCHS
    from ropeconv.families import GGUF_LAYOUTS as LAYOUTS
    from ropeconv.formats.gguf import OUTTYPES, QUANT_TYPES

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


def family_refusal(family: Any, method: Any, sample_plan: Callable[[], Any]) -> str | None:
    """No GGUF layout for the family, or a declaration (a rope_freqs carrier, LongRoPE tensors) its architecture's
    loader in llama.cpp does not read, found by running the method's own gguf_declaration on a sample plan."""
    if family.gguf is None:
        return family.no_gguf or "no GGUF layout"
    plan = sample_plan()
    if plan is None:
        return None
    from ropeconv.errors import UnsupportedError
    from ropeconv.families import GGUF_ARCHS

    try:
        method.gguf_declaration(plan, GGUF_ARCHS[family.gguf.arch])
    except UnsupportedError as exc:
        return str(exc)
    return None
