"""gguf: one <name>-<OUTTYPE>.gguf converted from the base as llama.cpp's converter lays it out, the plan declared
in llama.cpp's rope keys (or carried by a rope_freqs tensor) and recorded, with its base, in ropeconv.* keys
(provenance.gguf); types llama.cpp quantizes are converted first and quantized by llama.cpp's own quantizer. Run by
llama.cpp; a non-f32 file is also judged through a float32 twin. A GGUF base is retrofitted in place instead
(extend.from_gguf). Planning, writer, record, twin: gguf_export.output; twin policy: parity.twin_policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv.formats.base import EvalSpec, Format, Ref
from ropeconv.optionfields import option

OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # --outtype written by ropeconv (gguf_export.convert.OUTTYPES)
# llama-quantize's names (QUANT_OPTIONS), lower case; each maps to llama.cpp's LLAMA_FTYPE_MOSTLY_<NAME>
QUANT_TYPES = (
    "q4_0", "q4_1", "q5_0", "q5_1",
    "q2_k", "q2_k_s", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
    "iq4_nl", "iq4_xs", "iq3_xxs", "iq3_xs", "iq3_s", "iq3_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m",
    "iq1_s", "iq1_m",
)  # fmt: skip
ALL_OUTTYPES = OUTTYPES + QUANT_TYPES  # the rest: quantized by llama.cpp
SUFFIX = ".gguf"


def artifact(out: Path, rec: Mapping[str, Any]) -> Path:
    return out / rec["file"]


def summary(rec: dict[str, Any]) -> str:
    return f"{rec.get('file')} ({rec.get('outtype')})"


@dataclass(frozen=True)
class GgufOptions:
    """--to gguf's own options; both apply when a HuggingFace base is converted (a GGUF base keeps its tensors)."""

    outtype: str = option(
        "GGUF weight type when converting a HF base with --to gguf: f32, f16 (default), bf16, q8_0 written by "
        "ropeconv; q4_k_m, q5_k_m, q6_k, q4_0, q5_0, iq4_nl, iq4_xs, … quantized by llama.cpp's own quantizer from "
        "the float conversion (norms, biases and carriers stay f32)", "f16", flags=("--outtype",),
        click={"choices": ALL_OUTTYPES, "metavar": "TYPE"}, schema=ALL_OUTTYPES, converts_only=True)
    imatrix: Path | None = option(
        "an importance matrix (llama-imatrix's .gguf or legacy .dat) for llama.cpp's quantizer",
        flags=("--imatrix",), click={"type": "path"}, schema="path", converts_only=True)


def hub_quantized(rec: dict[str, Any]) -> bool:
    return rec.get("outtype") == "q8_0"


def eval_artifact(folder: Path) -> Path | None:
    """The one .gguf of a folder; several are refused (the user names one)."""
    from ropeconv.errors import InputError

    found = sorted(folder.glob(f"*{SUFFIX}"))
    if len(found) > 1:
        raise InputError(f"{folder}: {len(found)} {SUFFIX} files; name the one to evaluate")
    return found[0] if found else None


FORMAT = Format(
    "gguf", SUFFIX, "llama.cpp", "gguf", from_gguf=True, proof="llama.cpp running the GGUF",
    plan=Ref("ropeconv.gguf_export.output:plan"), writer=Ref("ropeconv.gguf_export.output:writer"),
    record=Ref("ropeconv.gguf_export.output:record"), artifact=artifact, twin=Ref("ropeconv.gguf_export.output:twin"),
    quantized_twin=Ref("ropeconv.parity.twin_policy:gguf_twin"), twin_note=Ref("ropeconv.parity.twin_policy:gguf_note"),
    dequantized=Ref("ropeconv.parity.dequantized:gguf_tensors"), runtime_module="ropeconv.parity.runtimes.llamacpp",
    recorded=Ref("ropeconv.provenance.gguf:recorded"), inspect=Ref("ropeconv.cli.inspect:_inspect_gguf"),
    summary=summary, verify_file=Ref("ropeconv.verify:_verify_gguf"),
    card_declaration=Ref("ropeconv.gguf_export.output:card_declaration"), serve=Ref("ropeconv.gguf_export.output:serve"),
    hub_quantized=hub_quantized,
    options_group=GgufOptions, matrix_note=Ref("ropeconv.gguf_export.capability:matrix_note"),
    family_refusal=Ref("ropeconv.gguf_export.capability:family_refusal"),
    eval=EvalSpec("gguf", 2, "a .gguf file", eval_artifact, Ref("ropeconv.eval.runtimes:GGUFRuntime"),
                  header_identifies=True),
)
