"""openvino: openvino/, an OpenVINO IR folder (openvino_model.xml/.bin, the tokenizer converted by
openvino-tokenizers, config.json) written by optimum-intel's own exporter (optimum.exporters.openvino.main_export)
from a float32 transformers folder ropeconv stages first (beside it, then removed); --ov-weights int8/int4 compress
the weights through optimum-intel's NNCF path (OVWeightQuantizationConfig), fp16 casts them. The exporter traces
transformers with the plan's config.json, so the position math is baked into the graph as constants (LongRoPE's
short/long switch kept in the graph by optimum-intel's model patcher); the plan and base are recorded in
openvino/ropeconv-openvino.json, which also marks the folder as this format's artifact. Run by OpenVINO through
optimum-intel's OVModelForCausalLM (f32 inference and KV cache) and its stateful KV cache; a compressed folder is also
judged through a float32 twin exported from the base.

optimum-intel pins transformers < 5.6, so it lives in its own environment (.venv-ov, `make openvino`, or
$ROPECONV_OPENVINO_PYTHON): the export and the runs are a subprocess there (openvino_export/ov_runner.py).
Planning, writer, record, provenance: openvino_export.output; what optimum-intel reads right: openvino_export.capability.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv.formats.base import EvalSpec, Format, Ref
from ropeconv.optionfields import option

DIR = "openvino"  # the OpenVINO folder inside an output directory
MARKER = "ropeconv-openvino.json"  # the plan, base and export the folder records; marks it as an openvino artifact
WEIGHTS = ("fp32", "fp16", "int8", "int4")
GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class OvOptions:
    """--to openvino's own options."""

    ov_weights: str = option(
        "with --to openvino: the IR's weights — fp32 (the default, proven strictly), fp16, or int8 / int4 compressed "
        "by optimum-intel's NNCF path (int8 asymmetric per channel, int4 symmetric in groups); all but fp32 are also "
        "judged through a float32 twin", "fp32", flags=("--ov-weights",), click={"choices": WEIGHTS}, schema=WEIGHTS)
    ov_group_size: int = option(
        "with --to openvino --ov-weights int4: the group size (32, 64 or 128; must divide the model's dimensions)",
        128, flags=("--ov-group-size",), click={"type": "int", "choices": GROUP_SIZES}, schema=GROUP_SIZES)


def home(_oplan, _out: Path) -> Path | None:
    return None  # optimum-intel's exporter writes the folder's config.json and tokenizer itself


def artifact(out: Path, rec: Mapping[str, Any]) -> Path:
    return out / rec.get("folder", DIR)


def summary(rec: dict[str, Any]) -> str:
    group = f", group {rec.get('group_size')}" if rec.get("weights") == "int4" else ""
    return f"{rec.get('folder', DIR)}/ (OpenVINO IR, {rec.get('weights')}{group}; optimum-intel {rec.get('optimum_intel')})"


def claims(path: Path) -> bool:
    """A folder ropeconv exported for OpenVINO: its marker beside openvino_model.xml."""
    path = Path(path)
    return (path / MARKER).is_file() and (path / "openvino_model.xml").is_file()


def eval_artifact(folder: Path) -> Path | None:
    """The OpenVINO folder of an output (openvino/), or the folder itself: the one holding the marker."""
    return next((p for p in (folder / DIR, folder) if claims(p)), None)


def hub_quantized(rec: dict[str, Any]) -> bool:
    return rec.get("weights") in ("int8", "int4")


FORMAT = Format(
    "openvino", None, "openvino", "openvino",
    proof="OpenVINO running the IR through optimum-intel's OVModelForCausalLM (f32 inference and KV cache; prefill, "
          "then decode steps through its stateful KV cache)",
    plan=Ref("ropeconv.openvino_export.output:plan"), writer=Ref("ropeconv.openvino_export.output:writer"), home=home,
    record=Ref("ropeconv.openvino_export.output:record"), artifact=artifact,
    twin=Ref("ropeconv.openvino_export.output:twin"),
    quantized_twin=Ref("ropeconv.openvino_export.output:quantized_twin"),
    twin_note=Ref("ropeconv.openvino_export.output:twin_note"),
    runtime_module="ropeconv.parity.runtimes.openvino", recorded=Ref("ropeconv.openvino_export.output:recorded"),
    inspect=Ref("ropeconv.openvino_export.output:inspect"), summary=summary,
    verify_file=Ref("ropeconv.verify:verify_engine_folder"),
    card_declaration=Ref("ropeconv.openvino_export.output:card_declaration"),
    serve=Ref("ropeconv.openvino_export.output:serve"), hub_quantized=hub_quantized,
    options_group=OvOptions, matrix_note=Ref("ropeconv.openvino_export.capability:matrix_note"),
    family_refusal=Ref("ropeconv.openvino_export.capability:family_refusal"), claims=claims,
    eval=EvalSpec("openvino", 4, "an OpenVINO folder (openvino/ with ropeconv-openvino.json)", eval_artifact,
                  Ref("ropeconv.eval.openvino_runtime:OpenVinoEvalRuntime")),
)
