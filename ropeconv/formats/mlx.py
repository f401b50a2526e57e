"""mlx: mlx/, an mlx-lm model folder (model.safetensors in mlx-lm's layout, config.json, the tokenizer) converted —
and quantized with --mlx-bits — by mlx-lm's own `convert` from a float32 transformers folder ropeconv writes first
(staged beside it, then removed). mlx-lm reads the plan from config.json's `rope_scaling` (legacy `type` first)
and the top-level `rope_theta`, so the folder declares it there; the plan and base are recorded in
mlx/ropeconv-mlx.json, which also marks the folder as this format's artifact. Run by mlx-lm (mlx on the CPU on
Linux, Metal on a Mac) through its KV cache; a quantized or float16/bfloat16 folder is also judged through a float32
twin mlx-lm converts from the base. Planning, writer, record, provenance: mlx_export.output; what mlx-lm reads and refuses:
mlx_export.capability."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv.formats.base import EvalSpec, Format, Ref
from ropeconv.optionfields import option

DIR = "mlx"  # the mlx-lm folder inside an output directory
MARKER = "ropeconv-mlx.json"  # the plan, base and conversion the folder records; marks the folder as an mlx artifact
BITS = (4, 8)
GROUP_SIZES = (32, 64)
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class MlxOptions:
    """--to mlx's own options."""

    mlx_bits: int | None = option(
        "with --to mlx: quantize the weights with mlx-lm's own quantizer (affine, 4 or 8 bits; default: not "
        "quantized); judged through a float32 twin mlx-lm converts from the base", flags=("--mlx-bits",),
        click={"type": "int", "choices": BITS}, schema=BITS)
    mlx_group_size: int = option(
        "with --to mlx --mlx-bits: the quantization group size (32 or 64; must divide the model's dimensions)", 64,
        flags=("--mlx-group-size",), click={"type": "int", "choices": GROUP_SIZES}, schema=GROUP_SIZES)
    mlx_dtype: str = option(
        "with --to mlx: the folder's float type (float32, the default, is what parity proves strictly; float16 or "
        "bfloat16 are judged through a float32 twin)", "float32", flags=("--mlx-dtype",),
        click={"choices": DTYPES}, schema=DTYPES)


def home(_mplan, _out: Path) -> Path | None:
    return None  # mlx-lm's convert writes the folder's config.json and tokenizer itself


def artifact(out: Path, rec: Mapping[str, Any]) -> Path:
    return out / rec.get("folder", DIR)


def summary(rec: dict[str, Any]) -> str:
    bits = f"{rec.get('bits')}-bit, group {rec.get('group_size')}" if rec.get("bits") else "not quantized"
    return f"{rec.get('folder', DIR)}/ ({rec.get('dtype')}, {bits}; mlx-lm {rec.get('mlx_lm')})"


def claims(path: Path) -> bool:
    """A folder ropeconv converted for mlx-lm: its marker beside config.json."""
    path = Path(path)
    return (path / MARKER).is_file() and (path / "config.json").is_file()


def eval_artifact(folder: Path) -> Path | None:
    """The mlx folder of an output (mlx/), or the folder itself."""
    return next((p for p in (folder / DIR, folder) if claims(p)), None)


def hub_quantized(rec: dict[str, Any]) -> bool:
    return bool(rec.get("bits"))


FORMAT = Format(
    "mlx", None, "mlx-lm", "mlx",
    proof="mlx-lm loading the mlx folder (prefill, then decode steps through its KV cache)",
    plan=Ref("ropeconv.mlx_export.output:plan"), writer=Ref("ropeconv.mlx_export.output:writer"), home=home,
    record=Ref("ropeconv.mlx_export.output:record"), artifact=artifact, twin=Ref("ropeconv.mlx_export.output:twin"),
    quantized_twin=Ref("ropeconv.mlx_export.output:quantized_twin"), twin_note=Ref("ropeconv.mlx_export.output:twin_note"),
    runtime_module="ropeconv.parity.runtimes.mlx", recorded=Ref("ropeconv.mlx_export.output:recorded"),
    inspect=Ref("ropeconv.mlx_export.output:inspect"), summary=summary,
    verify_file=Ref("ropeconv.verify:verify_engine_folder"),
    card_declaration=Ref("ropeconv.mlx_export.output:card_declaration"), serve=Ref("ropeconv.mlx_export.output:serve"),
    hub_quantized=hub_quantized,
    options_group=MlxOptions, matrix_note=Ref("ropeconv.mlx_export.capability:matrix_note"),
    family_refusal=Ref("ropeconv.mlx_export.capability:family_refusal"), claims=claims,
    eval=EvalSpec("mlx", 3, "an mlx folder (mlx/ with ropeconv-mlx.json)", eval_artifact,
                  Ref("ropeconv.eval.mlx_runtime:MlxEvalRuntime")),
)
