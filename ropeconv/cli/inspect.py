"""ropeconv inspect: what a checkpoint is, as ropeconv reads it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import click

from ropeconv.checkpoint import load_checkpoint
from ropeconv.checkpoint.rope_config import describe_scaling
from ropeconv.cli.options import emit_json
from ropeconv.formats import FORMATS, artifact_format, format_of
from ropeconv.manifest import read_manifest


def _scheme_json(s) -> dict:
    if s.kind == "alibi":
        return {"type": "alibi", "heads": s.n_heads, "max_bias": s.max_bias}
    if s.kind == "absolute":
        return {"type": "absolute", "table": s.table, "rows": s.original_ctx, "offset": s.offset}
    return {"type": "rope", "rope_theta": s.theta, "head_dim": s.head_dim, "rotary_dim": s.rotary_dim,
            "partial_rotary_factor": s.rotary_dim / s.head_dim}


def _scheme_line(s) -> str:
    if s.kind == "alibi":
        return f"alibi, {s.n_heads} heads, max bias {s.max_bias:g}"
    if s.kind == "absolute":
        return f"learned table {s.table}, {s.original_ctx} positions" + (f" (+{s.offset} leading rows)" if s.offset else "")
    return f"rope, base {s.theta:g}, rotary {s.rotary_dim}/{s.head_dim} dims per head"


@click.command(epilog="\b\nExamples:\n  ropeconv inspect ./SmolLM2-135M\n  ropeconv inspect out/ --json")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def inspect(path: Path, as_json: bool) -> int:
    """Architecture, position scheme, contexts, scaling, tensor count and bytes of PATH (a HF dir, a GGUF or a
    ropeconv ONNX model)."""
    fmt = format_of(path)
    if fmt is not None and fmt.inspect is not None:
        return fmt.inspect(path, as_json)
    written = (read_manifest(path) or {}).get("formats", {}) if path.is_dir() else {}
    listed = [FORMATS[name] for name in FORMATS if name in written]
    if listed and not any(f.is_checkpoint for f in listed):  # an output written as single-file formats alone
        first = next((f for f in listed if f.inspect is not None), None)
        if first is not None and first.inspect is not None:
            return first.inspect(first.artifact(path, written[first.name]), as_json)
    view = artifact_format(path).inspect  # a folder: the checkpoint format's view
    assert view is not None  # the checkpoint format has one
    return view(path, as_json)


def _inspect_checkpoint(path: Path, as_json: bool) -> int:
    """A HuggingFace folder (a base, or a ropeconv output with its manifest)."""
    ckpt = load_checkpoint(path, allow_pickle=False)
    s = ckpt.scheme
    manifest = read_manifest(ckpt.path)
    info: dict[str, Any] = {
        "path": str(ckpt.path),
        "architecture": ckpt.arch.model_type,
        "position_scheme": _scheme_json(s),
        "original_ctx": s.original_ctx,
        "declared_ctx": s.declared_ctx,
        "scaling": dict(s.existing_scaling) if s.existing_scaling else None,
        "weights": ckpt.weight_format,
        "tensors": len(ckpt.tensors),
        "tensor_bytes": ckpt.total_bytes,
        "dtypes": dict(sorted(Counter(t.dtype for t in ckpt.tensors).items())),
        "files": sorted({t.file.name for t in ckpt.tensors}),
        "ropeconv": None if not manifest else {"method": manifest.get("method"), "parity": manifest.get("parity")},
    }
    if as_json:
        emit_json(info)
        return 0
    scaling = describe_scaling(s.existing_scaling)
    click.echo(f"{info['path']}")
    click.echo(f"  architecture     {ckpt.arch.model_type}")
    click.echo(f"  positions        {_scheme_line(s)}")
    click.echo(f"  original context {s.original_ctx}")
    click.echo(f"  declared context {s.declared_ctx}")
    click.echo(f"  scaling          {scaling}")
    dtypes = ", ".join(f"{k}×{v}" for k, v in info["dtypes"].items())
    click.echo(f"  tensors          {len(ckpt.tensors)} ({dtypes}), {ckpt.total_bytes:,} bytes in "
               f"{len(info['files'])} file(s)")
    if manifest:
        parity = manifest.get("parity") or {}  # per format
        verdicts = ", ".join(f"{fmt} {'passed' if (r or {}).get('passed') else 'FAILED'}" for fmt, r in parity.items())
        click.echo(f"  ropeconv         {manifest.get('method')}, parity {verdicts or 'not checked'}")
        written = manifest.get("formats") or {}
        for fmt in FORMATS.values():  # the single-file formats beside the folder
            if not fmt.is_checkpoint and isinstance(written.get(fmt.name), dict):
                click.echo(f"  {fmt.name:<16} {fmt.summary(written[fmt.name])}")
    return 0


def _inspect_onnx(path: Path, as_json: bool) -> int:
    from ropeconv.errors import DamagedPlan, InputError
    from ropeconv.onnx_export.metadata import read_metadata, read_plan
    from ropeconv.onnx_export.plan import position_math
    from ropeconv.provenance import ATTENTION_KEY, BASE_KEY, DTYPE_KEY

    if not path.is_file():
        raise InputError(f"{path}: not found")
    damaged = None
    try:
        plan, props = read_plan(path)
    except DamagedPlan as exc:  # shown, not refused, as for GGUF
        damaged = str(exc).removeprefix(f"{path}: ")
        plan, props = None, read_metadata(path)
    data = path.with_name(path.name + ".data")
    info: dict[str, Any] = {
        "path": str(path),
        "format": "onnx",
        "bytes": path.stat().st_size + (data.stat().st_size if data.is_file() else 0),
        "external_data": data.name if data.is_file() else None,
        "dtype": props.get(DTYPE_KEY),
        "attention": props.get(ATTENTION_KEY),
        "base": props.get(BASE_KEY),
        "ropeconv": None if plan is None else {"method": plan.method, "original_ctx": plan.original_ctx,
                                               "target_ctx": plan.target_ctx, "position_math": position_math(plan)},
        "ropeconv_plan": "damaged" if damaged else ("recorded" if plan else None),
    }
    if as_json:
        emit_json(info)
        return 0
    click.echo(str(path))
    click.echo(f"  format           ONNX, --dtype {info['dtype'] or 'unknown'}, {info['bytes']:,} bytes"
               + (f" (weights in {data.name})" if info["external_data"] else ""))
    if info["attention"]:
        click.echo(f"  attention        {info['attention']}")
    if plan is None:
        click.echo(f"  ropeconv         {damaged}; verify cannot check this file" if damaged
                   else "  ropeconv         no plan in metadata_props (not written by ropeconv)")
        return 0
    click.echo(f"  ropeconv         {plan.method}, {plan.original_ctx} → {plan.target_ctx} tokens")
    click.echo(f"  positions        {position_math(plan)}")
    click.echo(f"  base             {info['base']}")
    return 0


def _inspect_gguf(path: Path, as_json: bool) -> int:
    from ropeconv.checkpoint.gguf_scheme import read_gguf_scheme
    from ropeconv.errors import DamagedPlan, InputError
    from ropeconv.gguf_io.reader import read_gguf
    from ropeconv.provenance.gguf import recorded_hub, recorded_plan

    src = read_gguf(path)
    s = read_gguf_scheme(src)
    # a damaged plan is shown, not refused: inspect says what the file holds (verify refuses it, with this reason)
    problem = None
    try:
        method, plan_state = recorded_plan(src).method, "recorded"
    except DamagedPlan as exc:
        method, plan_state, problem = None, "damaged", str(exc).removeprefix(f"{path}: ")
    except InputError:
        method, plan_state = None, None
    info: dict[str, Any] = {
        "path": str(path),
        "format": "gguf",
        "gguf_version": src.version,
        "architecture": src.arch,
        "position_scheme": {"type": "rope", "rope_theta": s.theta, "head_dim": s.head_dim, "rotary_dim": s.rotary_dim},
        "original_ctx": s.original_ctx,
        "declared_ctx": s.declared_ctx,
        "scaling": dict(s.existing_scaling) if s.existing_scaling else None,
        "tensors": len(src.tensors),
        "tensor_bytes": sum(t.nbytes for t in src.tensors),
        "types": dict(sorted(Counter(t.ggml_type.name for t in src.tensors).items())),
        "ropeconv": method,
        "ropeconv_plan": plan_state,
        "base_hub": recorded_hub(src),
    }
    if as_json:
        emit_json(info)
        return 0
    types = ", ".join(f"{k}×{v}" for k, v in info["types"].items())
    click.echo(str(path))
    click.echo(f"  format           GGUF v{src.version} ({src.arch})")
    click.echo(f"  positions        {_scheme_line(s)}")
    click.echo(f"  original context {s.original_ctx}")
    click.echo(f"  declared context {s.declared_ctx}")
    click.echo(f"  scaling          {describe_scaling(s.existing_scaling)}")
    click.echo(f"  tensors          {len(src.tensors)} ({types}), {info['tensor_bytes']:,} bytes")
    if method:
        click.echo(f"  ropeconv         {method}")
    elif problem:
        click.echo(f"  ropeconv         {problem}; verify cannot check this file")
    hub = info["base_hub"]
    if hub:
        file = f":{hub['file']}" if hub.get("file") else ""
        click.echo(f"  base (Hub)       {hub.get('repo_id')}@{hub.get('revision')}{file}, commit {hub.get('commit')}")
    return 0
