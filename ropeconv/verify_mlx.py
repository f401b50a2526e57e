"""`ropeconv verify OUT --runtime mlx`: a safetensors output folder loaded by mlx-lm as it is (mlx_lm.load reads a
transformers folder), refused where the mlx format refuses the cell. (An mlx folder, OUT/mlx, is re-proven on its
own by verify.verify_engine_folder, the mlx format's verify_file.)"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv.errors import InputError, UnsupportedError
from ropeconv.parity import ParityReport, Tolerance, check_parities

# ------------------------------------------------------------- `ropeconv verify OUT --runtime mlx`: mlx-lm on the folder

def serve(out: str, plan):
    """The card's mlx-lm command for a safetensors folder mlx-lm proved (it loads a transformers folder as it is)."""
    from ropeconv.mlx_export.output import mlx_serve

    return mlx_serve(out, plan)


@dataclass(frozen=True)
class CheckpointTarget:
    """A safetensors output to prove in mlx-lm, resolved from its manifest."""

    out: Path
    plan: Any
    base: Path  # the reference's weights
    vocab_size: int
    notes: tuple[str, ...]
    changed: str | None  # the files that are not those the manifest records (told after the proof, exit 1)


def resolve_checkpoint(out: Path, base: Path | None = None) -> CheckpointTarget:
    """The output's plan and the reference's weights; refused (UnsupportedError, exit 2) where mlx-lm reads the
    folder's config.json otherwise than transformers (mlx_export.capability: the mlx format's own refusals), and
    InputError when mlx-lm is not installed — both before anything runs."""
    from ropeconv.checkpoint.hf import read_config
    from ropeconv.formats import checkpoint_format
    from ropeconv.manifest import changed_files, describe_changes, load_manifest
    from ropeconv.mlx_export.capability import family_reason, scaling_reason
    from ropeconv.parity.runtimes.mlx import RUNTIME
    from ropeconv.positions import plan_from_json

    out = Path(out)
    if not out.is_dir():
        raise InputError(f"{out}: --runtime mlx proves a safetensors output folder (mlx-lm loads the folder)")
    manifest = load_manifest(out)
    if manifest.plan is None or manifest.vocab_size is None:
        raise InputError(f"{manifest.where}: damaged (its plan or vocab_size is missing)")
    checkpoint = checkpoint_format().name
    if manifest.formats and checkpoint not in manifest.formats:
        raise InputError(f"{out}: holds no {checkpoint} output ({', '.join(manifest.formats)}): --runtime mlx loads "
                         f"a {checkpoint} folder (an mlx folder is verified as `ropeconv verify {out}`)")
    try:
        plan = plan_from_json(manifest.plan)
    except ValueError as exc:
        raise InputError(f"{manifest.where}: plan: {exc}") from None
    config = read_config(out)
    text = config.get("text_config", config)
    why = family_reason(str(text.get("model_type")), plan.method) if plan.kind == "rope" else \
        f"mlx-lm has no {plan.kind} positions ({text.get('model_type')})"
    why = why or scaling_reason(text.get("rope_scaling"), plan)
    if why is not None:
        raise UnsupportedError(f"{out}: refused for mlx-lm: {why}")
    RUNTIME.require()
    notes: tuple[str, ...] = ()
    if base is None:
        recorded = Path(manifest.base_path) if manifest.base_path else None
        if recorded is not None and (recorded / "config.json").is_file() and not manifest.lora:
            base = recorded
        else:  # the output's tensors are byte copies of the base's (LoRA merged): the position math is what is proven
            base = out
            notes = ("reference built from this output's own weights (byte copies of the base's, LoRA merged) under "
                     "the recorded plan",)
    elif not (Path(base) / "config.json").is_file():
        raise InputError(f"--base {base}: not a HuggingFace model directory")
    changed = changed_files(manifest)
    return CheckpointTarget(out, plan, Path(base), manifest.vocab_size, notes,
                            describe_changes(manifest.root, changed) if changed else None)


def verify_checkpoint(target: CheckpointTarget, *, tokens: int | None = None, tolerance: Tolerance = Tolerance(),
                      progress=lambda _: None) -> ParityReport:
    """The safetensors folder loaded by mlx-lm (`mlx_lm.load(OUT)`, float32 weights as written) through its KV
    cache, against the reference: the mlx format's parity, run on the folder itself (mlx on the CPU)."""
    from ropeconv.parity.runtimes.mlx import RUNTIME

    return check_parities([(target.out, None)], target.base, target.plan, target.vocab_size, device="cpu",
                          tokens=tokens, tolerance=tolerance, notes=target.notes, progress=progress,
                          runtime=RUNTIME)[0]
