"""A recipe as an extend job: safe to repeat (skipped when the output's manifest already matches), to
interrupt (the pipeline stages and publishes atomically) and to branch on (0 ok, 1 parity, 2 bad input)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ropeconv.errors import InputError
from ropeconv.manifest import read_manifest
from ropeconv.methods.base import ExtendRequest
from ropeconv.parity import Tolerance
from ropeconv.recipe.load import Loaded


@dataclass(frozen=True)
class RecipeResult:
    out: Path
    skipped: bool  # the output's manifest already matched this recipe and its base
    result: object | None  # the pipeline's ExtendResult when it ran


def job_for(loaded: Loaded, force: bool = False):
    from ropeconv.cli.options import parse_bytes
    from ropeconv.pipeline import ExtendJob, parse_formats

    r = loaded.recipe
    base = loaded.resolve(r.base.path)
    if not base.exists():
        raise InputError(f"{loaded.file}: base {base} not found (base.path)")
    method = r.method
    options = {k: v for k, v in method.model_dump().items() if k not in ("name", "factor", "target_ctx")
               and v is not None}
    options.update({k: loaded.resolve(v) for k, v in r.path_options().items()})
    outtypes = {o.outtype for o in r.outputs if o.outtype}
    dtypes = {o.dtype for o in r.outputs if o.dtype}
    if any((o.outtype or o.imatrix) and o.format != "gguf" for o in r.outputs) or any(o.dtype and o.format != "onnx"
                                                                                       for o in r.outputs):
        raise InputError(f"{loaded.file}: outputs: outtype and imatrix belong to gguf, dtype to onnx")
    imatrix = next((loaded.resolve(o.imatrix) for o in r.outputs if o.imatrix), None)
    return ExtendJob(
        base=base,
        method=method.name,
        request=ExtendRequest(factor=method.factor, target_ctx=method.target_ctx, original_ctx=r.base.original_ctx,
                              options=options),
        out=loaded.resolve(r.out),
        formats=parse_formats(",".join(o.format for o in r.outputs), base),
        outtype=next(iter(outtypes), "f16"),
        imatrix=imatrix,
        onnx_dtype=next(iter(dtypes), "fp32"),
        force=force,
        rebase=r.base.rebase,
        allow_pickle=r.base.allow_pickle,
        max_shard_bytes=parse_bytes("max_shard_size", r.max_shard_size),
        verify=r.parity.verify,
        lora=tuple(loaded.resolve(a.path) for a in r.lora),
        lora_trained_with=_one_trained_with(loaded),
        force_method=r.force_method,
        device=r.parity.device,
        tokens=r.parity.tokens,
        tolerance=Tolerance(max_abs_logit=r.parity.max_abs_logit),
        recipe={"file": str(loaded.file.resolve()), "sha256": loaded.sha256},
        card=r.card.model_dump(exclude_defaults=True),
    )


def _one_trained_with(loaded: Loaded) -> str | None:
    given = {a.trained_with for a in loaded.recipe.lora if a.trained_with}
    if len(given) > 1:
        raise InputError(f"{loaded.file}: lora: adapters trained under different scalings cannot be merged into one "
                         "model")
    return next(iter(given), None)


def up_to_date(job) -> bool:
    """The output exists, was made by this recipe from this base, and every file it lists is there at its size."""
    out = Path(job.out)
    manifest = read_manifest(out) if out.is_dir() else None
    if not manifest or (manifest.get("recipe") or {}).get("sha256") != job.recipe["sha256"]:
        return False
    import ropeconv

    if manifest.get("ropeconv_version") != ropeconv.__version__:
        return False
    config = Path(job.base) / "config.json"
    if config.is_file() and manifest.get("base", {}).get("config_sha256") != hashlib.sha256(
            config.read_bytes()).hexdigest():
        return False
    for rel, record in (manifest.get("files") or {}).items():
        path = out / rel
        if not path.is_file() or path.stat().st_size != record.get("bytes"):
            return False
    if job.verify and not all((r or {}).get("passed") for r in (manifest.get("parity") or {}).values()):
        return False
    return True


def run_recipe(loaded: Loaded, *, force: bool = False, progress=None) -> RecipeResult:
    from ropeconv.pipeline import run

    job = job_for(loaded, force)
    if not force and up_to_date(job):
        return RecipeResult(job.out, True, None)
    out = Path(job.out)
    # a previous output of a recipe (any version of it) is this recipe's to replace; anything else needs --force
    previous = read_manifest(out) if out.is_dir() else None
    if previous and previous.get("recipe"):
        from dataclasses import replace

        job = replace(job, force=True)
    return RecipeResult(job.out, False, run(job, progress))
