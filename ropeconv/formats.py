"""The output formats as one table: what each is called, where its artifact lives, which runtime proves it and
what a GGUF base can be written as; and the names of their types. Code that needs one of these facts reads it here
instead of comparing a format name or a file suffix — and without importing the exporters (numpy, gguf-py and the
rest: ~0.3 s), so `ropeconv methods`, `extend --help` and an extend that writes only safetensors stay light.

This is the first step of the format registry (issue 17). Still to come, each format one module that also holds
- its planning (plan_gguf, plan_onnx; the safetensors plan is the checkpoint's own tensor list),
- a writer with one protocol: write(entry, source), close() -> files written, abort(), sha256 of what it
  hashed (SafetensorsWriter, GgufConversion, OnnxExport differ today in write's arguments and close's result),
  so extend.from_hf streams into a list of writers with no per-format branch,
- its twin policy (parity._candidate_runs: a float32 twin converted from the base, or dequantized from the file),
- its runtime module (parity.runtimes.runtime_for), its provenance record (provenance.gguf, onnx_export.metadata)
  and its inspect view (cli.inspect),
after which nothing outside the format modules switches on a format name or suffix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Format:
    name: str  # --to, the manifest's and the parity report's key, the capability matrix's column
    suffix: str | None  # the artifact is one file with this suffix; None: a folder (config.json beside it)
    runtime: str  # the runtime a parity check runs it in (ParityReport.runtime)
    library: str  # the model card's library_name when it is the first format written
    from_gguf: bool = False  # a GGUF base can be written in it (retrofitted in place of a conversion)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (  # the capability matrix's column order
        Format("safetensors", None, "transformers", "transformers"),
        Format("gguf", ".gguf", "llama.cpp", "gguf", from_gguf=True),
        Format("onnx", ".onnx", "onnxruntime", "onnx"),
    )
}
_BY_SUFFIX = {f.suffix: f for f in FORMATS.values() if f.suffix}

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


def format_of(path: Path) -> Format | None:
    """The format a file is by its suffix; None for anything else (a folder, say)."""
    return _BY_SUFFIX.get(Path(path).suffix)


def is_gguf(path: Path) -> bool:
    """A GGUF base or artifact (by suffix, as llama.cpp's tools name them)."""
    found = format_of(path)
    return found is not None and found.name == "gguf"
