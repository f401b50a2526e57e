"""A recipe as an extend job: safe to repeat (skipped when the output's manifest already matches), to
interrupt (the pipeline stages and publishes atomically) and to branch on (0 ok, 1 parity, 2 bad input)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ropeconv.errors import InputError
from ropeconv.manifest import read_manifest
from ropeconv.recipe.load import Loaded

if TYPE_CHECKING:
    from ropeconv.extend.job import ExtendResult


@dataclass(frozen=True)
class RecipeResult:
    out: Path
    skipped: bool  # the output's manifest already matched this recipe and its base
    result: ExtendResult | None  # the pipeline's result when it ran


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
    if job.hub is not None and (manifest.get("base", {}).get("hub") or {}).get("commit") != job.hub.commit:
        return False  # a Hub base whose revision now names another commit
    for rel, record in (manifest.get("files") or {}).items():
        path = out / rel
        if not path.is_file() or path.stat().st_size != record.get("bytes"):
            return False
    if job.verify and not all((r or {}).get("passed") for r in (manifest.get("parity") or {}).values()):
        return False
    return True


def run_recipe(loaded: Loaded, *, force: bool = False, progress=None) -> RecipeResult:
    """Skipped when up to date. This recipe's own previous output (its manifest names this recipe file) is
    replaced without --force; the rule for what may be replaced is staging.replace_refusal."""
    from ropeconv.export.staging import target_lock
    from ropeconv.extend.dispatch import run
    from ropeconv.extend.job import check_overlap

    job = replace(loaded.job, force=force)
    if not Path(job.base).exists():
        raise InputError(f"{loaded.file}: base {job.base} not found (base.path)")
    check_overlap(job)
    with target_lock(job.out):  # the skip decision and the run under one lock
        if not force and up_to_date(job):
            return RecipeResult(job.out, True, None)
        return RecipeResult(job.out, False, run(job, progress))
