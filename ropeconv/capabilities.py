"""The capability matrix (method × format), read from the method modules and the family records."""

from __future__ import annotations

import functools

from ropeconv import methods
from ropeconv.families import ARCHS
from ropeconv.formats import FORMATS
from ropeconv.methods.base import Cell, Support

_NOT_YET = Cell(Support.REFUSED, "no exporter for this format yet")


def format_notes() -> dict[str, str]:
    """Each format's note under its column, from its record (formats.Format.matrix_note)."""
    return {name: fmt.matrix_note() for name, fmt in FORMATS.items()}


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
    lines.extend(f"- {fmt} column: {note}" for fmt, note in format_notes().items() if note)
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
    from ropeconv.families import FAMILIES

    fam, module = FAMILIES[family], methods.get(method)
    if fam.position not in methods.positions_of(module):
        return Cell(Support.REFUSED, f"{method} acts on {'/'.join(methods.positions_of(module))} positions; "
                                     f"{family} uses {fam.position}")
    cell = module.CELLS.get(fmt, _NOT_YET)
    if cell.support is Support.REFUSED:
        return cell
    makes_rope_plan = fam.position == "rope" and method != "none"
    reason = FORMATS[fmt].family_refusal(fam, module, lambda: _sample_plan(family, method) if makes_rope_plan
                                         else None)
    return Cell(Support.REFUSED, reason) if reason else cell


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
