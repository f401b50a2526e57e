"""The mlx format's planning, writer (formats.Writer), manifest record, twin policy, provenance reader, inspect view
and model-card line.

The writer stages a transformers folder (the safetensors writer's shards, the extended config.json declaring the
plan in rope_scaling and rope_parameters, the tokenizer) in <out>/.mlx-staging, and close() hands it to mlx-lm's
own `mlx_lm.convert` (dtype, quantization) writing <out>/mlx/; the staging folder is then removed. mlx-lm is
imported only there (and by the twin), never while planning."""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv import jsontext
from ropeconv.errors import InputError, UnsupportedError
from ropeconv.export import engine_folder
from ropeconv.export.engine_folder import EngineFolder, EngineFolderWriter
from ropeconv.export.hf_config import extended_config
from ropeconv.formats.base import Note, Planning, Serve, Twin
from ropeconv.formats.mlx import DIR, MARKER
from ropeconv.mlx_export.capability import family_reason, scaling_reason
from ropeconv.provenance import provenance

FOLDER = EngineFolder("mlx", DIR, ".mlx-staging", MARKER)
INSTALL_HINT = "pip install 'ropeconv[mlx]' (mlx[cpu] and mlx-lm on Linux, mlx and mlx-lm on macOS)"


@dataclass(frozen=True)
class MlxPlan:
    planning: Planning
    config: dict[str, Any]  # the staged transformers config.json (the plan declared in rope_scaling too)
    scaling: dict[str, Any] | None  # the rope_scaling mlx-lm reads
    dtype: str
    bits: int | None
    group_size: int
    props: dict[str, str]  # provenance: plan, base, ropeconv version


def require() -> None:
    """InputError with the install hint when mlx-lm (or mlx) cannot be found; imports neither."""
    from importlib.util import find_spec

    for module in ("mlx_lm", "mlx"):
        if find_spec(module) is None:
            raise InputError(f"--to mlx needs {module.replace('_', '-')}; {INSTALL_HINT}")


def plan(p: Planning) -> MlxPlan:
    ckpt, position_plan = p.checkpoint, p.plan
    model_type = ckpt.arch.model_type
    reason = family_reason(model_type, position_plan.method)
    if reason is None and p.hf_rope is None:
        reason = "transformers cannot declare this plan in config.json, which is what mlx-lm reads"
    config = extended_config(ckpt.config, ckpt.arch, ckpt.scheme, position_plan, p.hf_rope) \
        if reason is None and p.hf_rope is not None else {}
    scaling = config.get("rope_scaling") if position_plan.kind == "rope" else None
    if reason is None and position_plan.kind != "rope":
        reason = f"mlx-lm runs rope models only here ({position_plan.kind} positions)"
    if reason is None:
        reason = scaling_reason(scaling, position_plan)
    if reason is not None:
        raise UnsupportedError(f"--to mlx: {model_type} with {position_plan.method}: {reason}")
    options = p.job.options_for("mlx")
    if options.mlx_bits is None and options.mlx_group_size != 64:
        raise InputError("--mlx-group-size applies with --mlx-bits (a quantized mlx folder)")
    if not p.dry_run:
        require()
    return MlxPlan(p, config, scaling, options.mlx_dtype, options.mlx_bits, options.mlx_group_size,
                   provenance(position_plan, ckpt.path))


def _convert(src: Path, dst: Path, **kwargs: Any) -> None:
    """mlx_lm.convert, its [INFO] lines dropped (stdout is the CLI's, --json's; the writer's note says what runs)."""
    try:
        from mlx_lm import convert
    except ImportError:
        raise InputError(f"mlx-lm is not installed; {INSTALL_HINT}") from None
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            convert(str(src), mlx_path=str(dst), **kwargs)
        except ValueError as exc:  # mlx-lm's own refusals (a group size that does not divide a dimension, say)
            raise InputError(f"mlx-lm's convert refused {src.name}: {str(exc).splitlines()[0][:300]}") from None


def mlx_lm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlx-lm")
    except PackageNotFoundError:
        return "not installed"


def _converted(mplan: MlxPlan, note: Note):
    """The writer's converter: mlx-lm's convert of the staged folder, checked to declare what was planned."""

    def convert(staging: Path, home: Path) -> dict[str, Any]:
        quantized = f", {mplan.bits}-bit groups of {mplan.group_size}" if mplan.bits else ""
        note(f"mlx: converting with mlx-lm's convert ({mplan.dtype}{quantized})")
        kwargs: dict[str, Any] = {"dtype": mplan.dtype}
        if mplan.bits:
            kwargs.update(quantize=True, q_bits=mplan.bits, q_group_size=mplan.group_size)
        _convert(staging, home, **kwargs)
        (home / "README.md").unlink(missing_ok=True)  # mlx-lm's card names the staging folder; ours is above
        written = jsontext.loads((home / "config.json").read_text(), "mlx/config.json")
        if written.get("rope_scaling") != mplan.scaling:  # what mlx-lm reads must be what was planned
            raise UnsupportedError(f"mlx-lm's convert wrote rope_scaling {written.get('rope_scaling')!r}, not the "
                                   f"planned {mplan.scaling!r}")
        return marker(mplan)

    return convert


def writer(mplan: MlxPlan, out: Path, note: Note) -> EngineFolderWriter:
    return EngineFolderWriter(FOLDER, mplan.planning, mplan.config, out, _converted(mplan, note))


def marker(mplan: MlxPlan) -> dict[str, Any]:
    return {"format": "mlx", **mplan.props, "dtype": mplan.dtype, "bits": mplan.bits,
            "group_size": mplan.group_size if mplan.bits else None, "mlx_lm": mlx_lm_version(),
            "rope_scaling": mplan.scaling}


def record(mplan: MlxPlan, _plan) -> dict[str, Any]:
    rec: dict[str, Any] = {"file": f"{DIR}/{MARKER}", "folder": DIR, "dtype": mplan.dtype, "bits": mplan.bits,
                           "mlx_lm": mlx_lm_version(), "declaration": mplan.scaling}
    if mplan.bits:
        rec["group_size"] = mplan.group_size
    return rec


def read_marker(folder: Path) -> dict[str, Any]:
    return engine_folder.read_marker(FOLDER, folder)


def recorded(folder: Path):
    """(plan, base) as ropeconv-mlx.json records them."""
    return engine_folder.recorded(FOLDER, folder)


def _needs_twin(found: dict[str, Any]) -> bool:
    return bool(found.get("bits")) or found.get("dtype", "float32") != "float32"


def twin(base: Path, position_plan, lora=None) -> Twin | None:
    """The float32 mlx folder mlx-lm's convert makes from the base's own weights with the plan's config.json: what a
    quantized or float16 folder is judged through strictly. None where it cannot be made so (LoRA merged, pickle
    weights): quantized_twin then dequantizes the folder itself."""
    return engine_folder.twin_writer(base, position_plan, lora, lambda src, dst: _convert(src, dst, dtype="float32"))


def quantized_twin(artifact: Path, given: Twin | None) -> Twin | None:
    """A quantized (or float16/bfloat16) mlx folder is judged strictly through a float32 twin: converted by mlx-lm
    from the base (given), else one mlx-lm's convert makes from the folder itself (dequantized, cast: the position
    math alone); the folder also runs as itself against the quantized limits."""
    found = read_marker(artifact)
    if not _needs_twin(found):
        return None
    if given is not None:
        return given

    def write(dst: Path) -> Path:
        _convert(Path(artifact), dst, dtype="float32", dequantize=bool(found.get("bits")))
        shutil.copyfile(Path(artifact) / MARKER, dst / MARKER)
        return dst

    return write


def twin_note(artifact: Path, given: Twin | None) -> str:
    found = read_marker(artifact)
    kind = f"{found['bits']}-bit" if found.get("bits") else str(found.get("dtype"))
    how = "converted by mlx_lm.convert from the base in float32" if given is not None else \
        ("dequantized and cast" if found.get("bits") else "cast") + " by mlx_lm.convert from the folder itself"
    return (f"mlx-lm ran a float32 twin of {Path(artifact).name}/ ({how}) for the strict check, and the folder itself "
            f"({kind}) for the q- rows")


def card_declaration(rec: dict[str, Any], _plan) -> str:
    from ropeconv.export.card import _fmt

    scaling = rec.get("declaration")
    keys = ", ".join(f"`{k}`: {_fmt(v)}" for k, v in scaling.items()) if scaling else "none (the base's own rope)"
    quant = f", {rec['bits']}-bit groups of {rec.get('group_size')}" if rec.get("bits") else ""
    return (f"mlx-lm (`{rec.get('folder', DIR)}/config.json`, converted by mlx-lm {rec.get('mlx_lm')}, "
            f"{rec.get('dtype')}{quant}): `rope_scaling` = {keys}, read by mlx-lm's initialize_rope.")


def serve(out: str, rec: Mapping[str, Any], plan, runtime: str) -> Serve | None:
    """mlx-lm's generate on the folder: its config.json's rope_scaling carries the plan."""
    from ropeconv.formats.mlx import FORMAT

    if runtime != FORMAT.runtime:
        return None
    return mlx_serve(f"{out}/{rec.get('folder', DIR)}", plan)


def mlx_serve(folder: str, plan) -> Serve:
    """mlx-lm on a folder it loads (an mlx folder, or a transformers folder it converts on load)."""
    return Serve("mlx-lm", f'mlx_lm.generate --model {folder} --prompt "$(cat long.txt)" --max-tokens 256',
                 "shell", f"mlx-lm reads the scaling from `{folder}/config.json`'s `rope_scaling`: no flag is needed and "
                 f"mlx-lm takes no context length (prompts of up to {plan.target_ctx} tokens). `mlx_lm.server --model "
                 f"{folder}` serves it the same way.")


def inspect(path: Path, as_json: bool) -> int:
    import click

    found = read_marker(path)
    config = jsontext.loads((Path(path) / "config.json").read_text(), f"{path}/config.json")
    plan_, base, ropeconv_info = engine_folder.ropeconv_view(FOLDER, path)
    weights = sorted(Path(path).glob("*.safetensors"))
    info = {
        "path": str(path), "format": "mlx", "architecture": config.get("model_type"),
        "rope_theta": config.get("rope_theta"), "rope_scaling": config.get("rope_scaling"),
        "max_position_embeddings": config.get("max_position_embeddings"), "dtype": found.get("dtype"),
        "quantization": config.get("quantization"), "bytes": sum(p.stat().st_size for p in weights),
        "files": [p.name for p in weights], "mlx_lm": found.get("mlx_lm"),
        "base": str(base) if base else None, "ropeconv": ropeconv_info,
    }
    if as_json:
        click.echo(jsontext.dumps(info, "--json output", indent=2, sort_keys=True, default=str))
        return 0
    quant = config.get("quantization")
    click.echo(str(path))
    click.echo(f"  format           mlx (mlx-lm {found.get('mlx_lm')})")
    click.echo(f"  architecture     {config.get('model_type')}")
    click.echo(f"  rope_theta       {config.get('rope_theta')}")
    click.echo(f"  rope_scaling     {config.get('rope_scaling')}")
    click.echo(f"  context          {config.get('max_position_embeddings')}")
    click.echo(f"  weights          {found.get('dtype')}"
               + (f", {quant.get('bits')}-bit groups of {quant.get('group_size')}" if quant else "")
               + f", {info['bytes']:,} bytes in {len(weights)} file(s)")
    if plan_ is not None:
        click.echo(engine_folder.ropeconv_line(plan_, base))
    return 0
