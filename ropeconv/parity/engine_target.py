"""A safetensors output to prove in another engine that loads the transformers folder as it is (vLLM, mlx-lm):
resolved from its manifest before anything runs (`ropeconv verify OUT --runtime vllm|mlx`).

The plan is the manifest's; the reference's weights are the recorded base's, else (base gone, or LoRA merged) the
output's own tensors, byte copies of the base's (LoRA merged), under the recorded plan: the position math is what is
proven. The engine's refusal of the cell is told here (UnsupportedError, exit 2), and so is a damaged manifest or a
--base that is not a model folder (InputError, exit 2); files changed since the manifest are told after the proof."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv.errors import InputError, UnsupportedError

LORA_NOTE = ("reference built from this output's own weights (byte copies of the base's, LoRA merged) under the "
             "recorded plan")


@dataclass(frozen=True)
class EngineTarget:
    """One output to prove in an engine, resolved from its manifest."""

    out: Path
    plan: Any
    base: Path  # the reference's weights
    vocab_size: int
    notes: tuple[str, ...]
    changed: str | None = None  # the files that are not those the manifest records (told after the proof, exit 1)


def resolve_output(out: Path, base: Path | None, *, engine: str, flag: str,
                   refusal: Callable[[Any, dict[str, Any]], str | None], hint: str = "") -> EngineTarget:
    """The output folder's plan and reference weights for `engine` (as messages name it), reached by `flag`;
    refusal(plan, config.json) says why the engine cannot prove the cell (None: it can); hint follows the line for
    an output that holds no checkpoint folder."""
    from ropeconv.checkpoint.hf import read_config
    from ropeconv.formats import checkpoint_format
    from ropeconv.manifest import changed_files, describe_changes, load_manifest
    from ropeconv.positions import plan_from_json

    out = Path(out)
    if not out.is_dir():
        raise InputError(f"{out}: {flag} proves a safetensors output folder ({engine} loads the folder)")
    manifest = load_manifest(out)
    if manifest.plan is None or manifest.vocab_size is None:
        raise InputError(f"{manifest.where}: damaged (its plan or vocab_size is missing)")
    checkpoint = checkpoint_format().name  # the engine loads what transformers loads: the checkpoint folder
    if manifest.formats and checkpoint not in manifest.formats:
        raise InputError(f"{out}: holds no {checkpoint} output ({', '.join(manifest.formats)}): {engine} loads a "
                         f"{checkpoint} folder{hint}")
    try:
        plan = plan_from_json(manifest.plan)
    except ValueError as exc:
        raise InputError(f"{manifest.where}: plan: {exc}") from None
    why = refusal(plan, read_config(out))
    if why is not None:
        raise UnsupportedError(f"{out}: refused for {engine}: {why}")
    notes: tuple[str, ...] = ()
    if base is None:
        recorded = Path(manifest.base_path) if manifest.base_path else None
        if recorded is not None and (recorded / "config.json").is_file() and not manifest.lora:
            base = recorded
        else:
            base, notes = out, (LORA_NOTE,)
    elif not (Path(base) / "config.json").is_file():
        raise InputError(f"--base {base}: not a HuggingFace model directory")
    changed = changed_files(manifest)
    return EngineTarget(out, plan, Path(base), manifest.vocab_size, notes,
                        describe_changes(manifest.root, changed) if changed else None)
