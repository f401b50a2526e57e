"""`ropeconv verify OUT --runtime mlx`: a safetensors output folder loaded by mlx-lm as it is (mlx_lm.load reads a
transformers folder), refused where the mlx format refuses the cell. (An mlx folder, OUT/mlx, is re-proven on its
own by verify.verify_engine_folder, the mlx format's verify_file.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ropeconv.parity import ParityReport, Tolerance, check_parities
from ropeconv.parity.engine_target import EngineTarget, resolve_output


def serve(out: str, plan):
    """The card's mlx-lm command for a safetensors folder mlx-lm proved (it loads a transformers folder as it is)."""
    from ropeconv.mlx_export.output import mlx_serve

    return mlx_serve(out, plan)


def refusal(plan, config: dict[str, Any]) -> str | None:
    """Why mlx-lm cannot prove this safetensors folder (None: it can): where it reads the folder's config.json
    otherwise than transformers (mlx_export.capability: the mlx format's own refusals)."""
    from ropeconv.mlx_export.capability import family_reason, scaling_reason

    text = config.get("text_config", config)
    why = family_reason(str(text.get("model_type")), plan.method) if plan.kind == "rope" else \
        f"mlx-lm has no {plan.kind} positions ({text.get('model_type')})"
    return why or scaling_reason(text.get("rope_scaling"), plan)


def resolve_checkpoint(out: Path, base: Path | None = None) -> EngineTarget:
    """The output's plan and the reference's weights; refused (UnsupportedError, exit 2) where mlx-lm reads the
    folder otherwise than transformers, and InputError when mlx-lm is not installed — both before anything runs."""
    from ropeconv.parity.runtimes.mlx import RUNTIME

    target = resolve_output(out, base, engine="mlx-lm", flag="--runtime mlx", refusal=refusal,
                            hint=f" (an mlx folder is verified as `ropeconv verify {out}`)")
    RUNTIME.require()
    return target


def verify_checkpoint(target: EngineTarget, *, tokens: int | None = None, tolerance: Tolerance = Tolerance(),
                      progress=lambda _: None) -> ParityReport:
    """The safetensors folder loaded by mlx-lm (`mlx_lm.load(OUT)`, float32 weights as written) through its KV
    cache, against the reference: the mlx format's parity, run on the folder itself (mlx on the CPU)."""
    from ropeconv.parity.runtimes.mlx import RUNTIME

    return check_parities([(target.out, None)], target.base, target.plan, target.vocab_size, device="cpu",
                          tokens=tokens, tolerance=tolerance, notes=target.notes, progress=progress,
                          runtime=RUNTIME)[0]
