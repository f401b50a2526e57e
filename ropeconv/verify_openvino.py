"""`ropeconv verify OUT/openvino`: an OpenVINO folder re-proven on its own, with the plan and base its
ropeconv-openvino.json records (the openvino format's verify_file). The base may also be the output directory above
it, whose safetensors are byte copies of the base's; a compressed folder is judged through a float32 twin exported
from that base."""

from __future__ import annotations

from pathlib import Path

from ropeconv.errors import InputError
from ropeconv.manifest import find_manifest
from ropeconv.parity import ParityReport, check_parities


def verify_folder(folder: Path, base: Path | None, *, device, tokens, tolerance, progress, probe: dict,
                  allow_pickle) -> ParityReport:
    from ropeconv.checkpoint.hf import read_config
    from ropeconv.extend.from_hf import vocab_size
    from ropeconv.openvino_export.output import recorded
    from ropeconv.verify import refuse_pickle

    folder = Path(folder)
    plan, recorded_base = recorded(folder)
    beside = folder.parent
    manifest = find_manifest(beside)
    if manifest is not None and manifest.lora:
        raise InputError(f"{folder}: LoRA adapters were merged into it; verify the output directory {beside}, whose "
                         "manifest lists them")
    notes: tuple[str, ...] = ()
    if base is None:
        if recorded_base is not None and (recorded_base / "config.json").is_file():
            base = recorded_base
        elif plan.kind != "absolute" and ((beside / "model.safetensors").is_file()
                                          or (beside / "model.safetensors.index.json").is_file()):
            base, notes = beside, (f"base {recorded_base} not found; reference built from {beside}'s weights",)
        else:
            raise InputError(f"{folder}: its base {recorded_base} is not there; pass --base BASE_DIR")
    elif not (Path(base) / "config.json").is_file():
        raise InputError(f"--base {base}: not a HuggingFace model directory")
    refuse_pickle(Path(base), allow_pickle, "the base")
    from ropeconv.openvino_export.output import twin

    return check_parities([(folder, twin(Path(base), plan))], Path(base), plan, vocab_size(read_config(Path(base))),
                          device=device, tokens=tokens, tolerance=tolerance, notes=notes, progress=progress.note,
                          **probe)[0]

