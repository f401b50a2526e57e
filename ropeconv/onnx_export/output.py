"""The ONNX format's planning, writer (formats.Writer), manifest record, float32 twin, provenance reader and
model-card line.

The writer is onnx_export.export.OnnxExport behind the one protocol, in its own folder; close() runs onnx.checker
over the graph and writes genai_config.json."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ropeconv import jsontext
from ropeconv.formats.base import Note, Planning, Serve, Twin
from ropeconv.formats.onnx import DIR, MODEL_FILE
from ropeconv.onnx_export import OPSET
from ropeconv.onnx_export.metadata import read_plan
from ropeconv.onnx_export.plan import OnnxPlan, plan_onnx, position_math
from ropeconv.provenance import ATTENTION_KEY, BASE_KEY, provenance


def plan(p: Planning) -> OnnxPlan:
    return plan_onnx(p.checkpoint, p.plan, p.job.options_for("onnx").dtype, provenance(p.plan, p.checkpoint.path))


class OnnxOutputWriter:
    def __init__(self, oplan: OnnxPlan, out: Path, note: Note) -> None:
        self.oplan, self.note = oplan, note
        self.home = Path(out) / DIR
        self.home.mkdir()
        try:
            from ropeconv.onnx_export.export import OnnxExport

            self._export = OnnxExport(oplan, self.home / MODEL_FILE)
        except BaseException:
            shutil.rmtree(self.home, ignore_errors=True)
            raise
        self._files: list[str] = []
        self._sha256: dict[str, str] = {}

    def write(self, entry, source) -> None:
        self._export.write(entry, source)

    def close(self) -> None:
        self.note("onnx: checking the graph with onnx.checker")
        self._files = [f"{DIR}/{p.name}" for p in self._export.close()]
        self._sha256 = {f"{DIR}/{name}": digest for name, digest in self._export.sha256.items()}
        if self.oplan.genai:  # onnxruntime-genai's description of the decoder (hashed by the manifest)
            (self.home / "genai_config.json").write_text(jsontext.dumps(self.oplan.genai, "genai_config.json",
                                                                        indent=2) + "\n")

    def abort(self) -> None:
        self._export.abort()
        shutil.rmtree(self.home, ignore_errors=True)
        self._files, self._sha256 = [], {}

    def files(self) -> list[str]:
        return list(self._files)

    def sha256(self) -> dict[str, str]:
        return dict(self._sha256)


def writer(oplan: OnnxPlan, out: Path, note: Note) -> OnnxOutputWriter:
    return OnnxOutputWriter(oplan, out, note)


def record(oplan: OnnxPlan, position_plan) -> dict[str, Any]:
    return {
        "file": f"{DIR}/{MODEL_FILE}",
        "dtype": oplan.dtype,
        "opset": OPSET,
        "attention": oplan.metadata[ATTENTION_KEY],
        "external_data": oplan.external,
        "position_math": position_math(position_plan),
        "genai_config": oplan.genai is not None,
    }


def twin(base: Path, plan, lora=None) -> Twin:
    """A float16 ONNX is judged strictly through a float32 export of the same base and plan, and as itself
    against the quantized limits."""
    from ropeconv.onnx_export.export import export_file

    return lambda dst: export_file(base, plan, "fp32", dst, lora)


def recorded(path: Path):
    """(plan, base) as metadata_props record them."""
    found, props = read_plan(path)
    return found, (Path(props[BASE_KEY]) if props.get(BASE_KEY) else None)


def card_declaration(rec: dict[str, Any], _plan) -> str:
    attention = f", attention by {rec['attention']}" if rec.get("attention") else ""
    return (f"onnxruntime (`{rec['file']}`, --dtype {rec['dtype']}, opset {rec['opset']}{attention}): the "
            f"position math is baked into the graph — {rec['position_math']}.")


def serve(out: str, rec: Mapping[str, Any], plan, runtime: str) -> Serve | None:
    """onnxruntime running the decoder as parity ran it: an InferenceSession fed optimum's input names."""
    from ropeconv.formats.onnx import FORMAT

    if runtime != FORMAT.runtime:
        return None
    command = "\n".join([
        "import onnxruntime as ort", "",
        f'session = ort.InferenceSession("{out}/{rec["file"]}")',
        "# inputs: input_ids, attention_mask, position_ids, past_key_values.{i}.key/value (empty on the first call);",
        "# outputs: logits, present.{i}.key/value, fed back as the next call's past",
    ])
    return Serve("onnxruntime", command, "python",
                 "The position math is in the graph: nothing to configure; positions up to "
                 f"{plan.target_ctx - 1} (a context of {plan.target_ctx}).")
