"""onnx: onnx/model.onnx (+ model.onnx.data over protobuf's 2 GB limit), a decoder graph with the position math as
constants or computed per call; the plan, base and dtype recorded in metadata_props (provenance keys); the folder
self-contained (config, tokenizer, genai_config.json). Run by onnxruntime; a float16 or int4 model is also judged
through a float32 export of the same base and plan. Planning, writer, record, twin, provenance reader:
onnx_export.output; twin policy: parity.twin_policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv.formats.base import EvalSpec, Format, Ref
from ropeconv.optionfields import option

DIR = "onnx"  # the ONNX decoder's folder inside an output directory
MODEL_FILE = "model.onnx"
DTYPES = ("fp32", "fp16", "int4")  # --dtype


@dataclass(frozen=True)
class OnnxOptions:
    """--to onnx's own options."""

    dtype: str = option(
        "ONNX weights and compute with --to onnx: fp32 (default); fp16 (float16 weights, activations and KV cache, "
        "for GPUs); int4 (MatMulNBits weights by onnxruntime's quantizer, float32 activations)", "fp32",
        flags=("--dtype",), click={"choices": DTYPES}, schema=DTYPES)


def home(_oplan, out: Path) -> Path:
    return out / DIR  # the folder is self-contained: what optimum's ORTModel and onnxruntime-genai look for


def artifact(out: Path, rec: Mapping[str, Any]) -> Path:
    return out / rec["file"]


def summary(rec: dict[str, Any]) -> str:
    return f"{rec.get('file')} ({rec.get('dtype')}, opset {rec.get('opset')})"


def eval_artifact(folder: Path) -> Path | None:
    """The decoder of an output folder (onnx/model.onnx), or one lying in the folder itself."""
    return next((p for p in (folder / DIR / MODEL_FILE, folder / MODEL_FILE) if p.is_file()), None)


FORMAT = Format(
    "onnx", ".onnx", "onnxruntime", "onnx",
    proof="onnxruntime running the ONNX decoder (prefill, then decode steps through its KV cache)",
    plan=Ref("ropeconv.onnx_export.output:plan"), writer=Ref("ropeconv.onnx_export.output:writer"), home=home,
    record=Ref("ropeconv.onnx_export.output:record"), artifact=artifact, twin=Ref("ropeconv.onnx_export.output:twin"),
    quantized_twin=Ref("ropeconv.parity.twin_policy:onnx_twin"), twin_note=Ref("ropeconv.parity.twin_policy:onnx_note"),
    dequantized=Ref("ropeconv.parity.dequantized:onnx_int4_tensors"), runtime_module="ropeconv.parity.runtimes.ort",
    recorded=Ref("ropeconv.onnx_export.output:recorded"), inspect=Ref("ropeconv.cli.inspect:_inspect_onnx"),
    summary=summary, verify_file=Ref("ropeconv.verify:_verify_onnx"),
    card_declaration=Ref("ropeconv.onnx_export.output:card_declaration"), serve=Ref("ropeconv.onnx_export.output:serve"),
    options_group=OnnxOptions,
    matrix_note=Ref("ropeconv.onnx_export.capability:matrix_note"),
    family_refusal=Ref("ropeconv.onnx_export.capability:family_refusal"),
    eval=EvalSpec("onnx", 1, "onnx/model.onnx", eval_artifact, Ref("ropeconv.eval.runtimes:OnnxRuntime")),
)
