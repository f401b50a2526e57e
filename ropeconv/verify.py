"""verify: re-prove an existing output against the base with the plan its manifest records."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ropeconv.errors import InputError, RopeconvError
from ropeconv.formats import FORMATS, checkpoint_format, format_of
from ropeconv.manifest import (
    AdapterRecord,
    ChangedFiles,
    Manifest,
    adapter_records,
    changed_files,
    describe_changes,
    find_manifest,
    load_manifest,
)
from ropeconv.parity import ParityReport, Tolerance, check_parities
from ropeconv.positions import plan_from_json
from ropeconv.progress import Progress


def verify_output(
    out: Path,
    *,
    base: Path | None = None,
    device: str | None = None,
    tokens: int | None = None,
    tolerance: Tolerance = Tolerance(),
    progress: Progress | None = None,
    full_length: bool | None = None,
    max_memory: str | None = None,
    allow_pickle: bool = False,
) -> list[ParityReport]:
    """One report per artifact: a file of a registered format (its record's verify_file), or each format an output
    directory's manifest lists.
    Every folder whose weights would be loaded is checked first: pickle weights need allow_pickle.

    full_length: a probe from position 0 to the target (None: the default, full length on a GPU up to 32k);
    max_memory: --max-memory caps for the transformers models (disk offload beside OUT)."""
    from ropeconv.device.placement import parse_max_memory

    progress = progress or Progress(enabled=False)
    out = Path(out)
    probe: dict[str, Any] = {"full_length": full_length, "placement": parse_max_memory(max_memory).beside(out)}
    if not out.exists():
        raise InputError(f"{out}: not found")
    if tokens is not None and tokens < 2:
        raise InputError(f"--tokens must be at least 2, got {tokens}")
    fmt = format_of(out)
    if fmt is not None and fmt.verify_file is not None and (out.is_file() or fmt.suffix is None):
        home = _home_manifest(out)  # a file of a ropeconv output folder: that output's files are checked too
        verify_file = fmt.verify_file
        return _judged(home, progress, lambda: [
            verify_file(out, base, device=device, tokens=tokens, tolerance=tolerance, progress=progress,
                            probe=probe, allow_pickle=allow_pickle)])
    if not out.is_dir():
        raise InputError(f"{out}: expected a ropeconv output directory")
    manifest = load_manifest(out)
    if manifest.plan is None or manifest.base_path is None or manifest.vocab_size is None:
        raise InputError(f"{manifest.where}: damaged (its plan, base or vocab_size is missing)")
    vocab_size: int = manifest.vocab_size
    try:
        plan = plan_from_json(manifest.plan)
    except ValueError as exc:
        raise InputError(f"{manifest.where}: plan: {exc}") from None
    recorded = Path(manifest.base_path)
    # an output written before formats were recorded holds safetensors only
    written = manifest.formats or {checkpoint_format().name: {}}
    listed = {FORMATS[name]: FORMATS[name].artifact(out, record) for name, record in written.items()}
    for fmt, artifact in listed.items():
        if not fmt.is_checkpoint and not (artifact.is_file() or (fmt.suffix is None and artifact.is_dir())):
            raise InputError(f"{artifact}: listed in the manifest but missing")
    # an output folder transformers loads holds the base's tensors (LoRA merged)
    checkpoint = any(fmt.is_checkpoint for fmt in listed)
    notes: tuple[str, ...] = ()
    lora_found = _adapters(manifest.lora)
    if base is None:
        if _is_model_dir(recorded) and lora_found is not None:
            base = recorded
        elif checkpoint and plan.kind != "absolute":
            # the tensors are byte copies of the base's (LoRA merged), so the output's own weights stand in for
            # them (not so when the position table was resampled)
            base, lora_found = out, []
            missing = "base" if not _is_model_dir(recorded) else "LoRA adapter (moved or changed)"
            notes = (f"{missing} not found; reference built from this output's weights",)
        else:
            raise InputError(f"{out}: its base {recorded} or a LoRA adapter it merged is not there; pass --base "
                             "BASE_DIR (and keep the adapters where the manifest lists them)")
    elif not _is_model_dir(Path(base)):
        raise InputError(f"--base {base}: not a HuggingFace model directory (no config.json)")
    elif lora_found is None:
        raise InputError(f"{out}: a LoRA adapter it merged is missing or changed: "
                         f"{', '.join(a.path for a in manifest.lora)}")
    base = Path(base)
    refuse_pickle(base, allow_pickle, "the base")
    if checkpoint:
        refuse_pickle(out, allow_pickle, "the output")

    def prove() -> list[ParityReport]:
        # transformers sizes models from these configs: each is checked against its tensors first
        for folder in {base, out} if checkpoint else {base}:
            ckpt = _check_against_tensors(folder)
            if ckpt is not None:
                _check_plan_fits(manifest.where, plan, ckpt)
        _check_vocab_size(manifest, base)
        lora = _merge(lora_found, base, allow_pickle) if lora_found else None
        # in the registry's order (the order extend checks them in)
        artifacts = [(listed[fmt], fmt.twin(base, plan, lora)) for fmt in FORMATS.values() if fmt in listed]
        return check_parities(artifacts, base, plan, vocab_size, device=device, tokens=tokens,
                              tolerance=tolerance, notes=notes, progress=progress.note, lora=lora, **probe)

    return _judged(manifest, progress, prove)


def _judged(manifest: Manifest | None, progress: Progress, prove: Callable[[], list[ParityReport]]) \
        -> list[ParityReport]:
    """prove()'s reports, and every file the manifest lists checked against its recorded size and sha256: hashed
    before the proof runs, told after it (ChangedFiles, exit 1, when the proof passed; appended to the proof's own
    error when it failed), so a changed file the proof catches too is reported with what the proof found."""
    changed = []
    if manifest is not None:
        progress.note(f"checking {len(manifest.files)} files against the sha256 the manifest records")
        changed = changed_files(manifest)
    try:
        reports = prove()
    except RopeconvError as exc:
        if manifest is not None and changed:
            exc.args = (f"{exc}; {describe_changes(manifest.root, changed)}",)
        raise
    if manifest is not None and changed:
        raise ChangedFiles(describe_changes(manifest.root, changed), reports)
    return reports


def _home_manifest(artifact: Path) -> Manifest | None:
    """The manifest of the ropeconv output an artifact file belongs to (beside it, or a folder up: onnx/), if any."""
    for folder in (artifact.parent, artifact.parent.parent):
        manifest = find_manifest(folder)
        if manifest is not None and Path(os.path.relpath(artifact, folder)).as_posix() in manifest.files:
            return manifest
    return None


def _lora_of(folder: Path) -> tuple[AdapterRecord, ...]:
    """The adapters merged into the ropeconv output `folder` (none when it is not one)."""
    manifest = find_manifest(folder)
    return manifest.lora if manifest else ()


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _check_vocab_size(manifest: Manifest, base: Path) -> None:
    """The probe draws token ids below the recorded vocab_size: it must be the base's."""
    from ropeconv.checkpoint.hf import read_config
    from ropeconv.extend.from_hf import vocab_size

    found = vocab_size(read_config(base))
    if manifest.vocab_size != found:
        raise InputError(f"{manifest.where}: vocab_size {manifest.vocab_size} is not the base's ({found} in "
                         f"{base}/config.json)")

def _check_against_tensors(path: Path):
    """load_checkpoint's checks (config against the safetensors headers) for a folder transformers will load: the
    Checkpoint, or None for a folder of pickle weights (transformers' to load, and to refuse)."""
    from ropeconv.checkpoint import load_checkpoint

    return load_checkpoint(path) if any(path.glob("*.safetensors")) else None


def _check_plan_fits(where: str, plan, ckpt) -> None:
    """A recorded plan must be one for this model: its kind of positions, rotated channels, heads or table."""
    scheme = ckpt.scheme
    if plan.kind != scheme.kind:
        raise InputError(f"{where}: plan: {plan.kind} positions, but {ckpt.path} has {scheme.kind} positions")
    for name, recorded, found in (
            ("rotary_dim", getattr(plan, "rotary_dim", None), getattr(scheme, "rotary_dim", None)),
            ("slopes (one per head)", len(getattr(plan, "slopes", ())), getattr(scheme, "n_heads", 0)),
            ("table", getattr(plan, "table", None), getattr(scheme, "table", None))):
        if recorded != found:
            raise InputError(f"{where}: plan: {name} {recorded} does not fit {ckpt.path} ({found})")


def _adapters(records: tuple[AdapterRecord, ...]) -> list | None:
    """The adapters a manifest lists, read again; None when one is gone or its bytes changed."""
    from ropeconv.lora import read_adapter

    adapters = []
    for record in records:
        path = Path(record.path)
        if not path.is_dir():
            return None
        try:
            adapter = read_adapter(path)
        except InputError:
            return None
        if adapter.sha256 != record.sha256:
            return None
        adapters.append(adapter)
    return adapters


def refuse_pickle(folder: Path, allow_pickle: bool, role: str) -> None:
    """verify loads folders through transformers, which unpickles .bin weights: only on the user's word."""
    from ropeconv.checkpoint.hf import pickle_weights

    found = [] if allow_pickle else pickle_weights(folder)
    if found:
        raise InputError(f"{role} {folder}: weights are pickle files ({found[0].name}); loading pickles can run "
                         "code — pass --allow-pickle to load them with torch.load(weights_only=True)")


def _merge(adapters: list, base: Path, allow_pickle: bool = False):
    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.lora import plan_merge

    return plan_merge(adapters, load_checkpoint(base, allow_pickle=allow_pickle).tensors)


def _verify_gguf(out: Path, base: Path | None, *, device, tokens, tolerance, progress, probe: dict,
                 allow_pickle) -> ParityReport:
    from ropeconv.extend.from_gguf import verify_gguf_file
    from ropeconv.provenance.gguf import recorded

    plan, recorded_base = recorded(out)
    if base is None:
        if not recorded_base.is_file():
            raise InputError(f"{out}: its base {recorded_base} is not there; pass --base BASE.gguf")
        base = recorded_base
    elif not (Path(base).is_file() or (Path(base) / "config.json").is_file()):
        # a HF directory holding the same weights (e.g. transformers' dequantization of this GGUF) also serves
        raise InputError(f"--base {base}: neither a GGUF file nor a HuggingFace model directory")
    refuse_pickle(Path(base), allow_pickle, "the base")
    from ropeconv import jsontext
    from ropeconv.gguf_io.reader import read_gguf
    from ropeconv.provenance import LORA_KEY

    lora = None
    in_file = read_gguf(out).value(LORA_KEY)
    # a retrofit records its adapters in the file; a conversion in its output folder's manifest
    listed = adapter_records(jsontext.loads(in_file, f"{out}: {LORA_KEY}"), f"{out}: {LORA_KEY}") \
        if isinstance(in_file, str) else _lora_of(out.parent)
    if listed:
        adapters = _adapters(listed)
        if adapters is None:
            raise InputError(f"{out}: a LoRA adapter merged into it is missing or changed")
        if Path(base).is_dir():  # converted from a HF base
            lora = _merge(adapters, Path(base), allow_pickle)
        else:
            from ropeconv.lora.gguf_base import plan_gguf_lora

            lora = plan_gguf_lora(read_gguf(Path(base)), adapters).merge
    return verify_gguf_file(out, Path(base), plan, device=device, tokens=tokens, tolerance=tolerance,
                            progress=progress, lora=lora, **probe)


def _verify_onnx(model: Path, base: Path | None, *, device, tokens, tolerance, progress, probe: dict,
                 allow_pickle) -> ParityReport:
    """A model.onnx carries its plan and base in metadata_props; the base may also be the output directory
    above it, whose safetensors are byte copies of the base's."""
    from ropeconv.checkpoint.hf import read_config
    from ropeconv.extend.from_hf import vocab_size
    from ropeconv.onnx_export.metadata import read_plan
    from ropeconv.provenance import BASE_KEY, PLAN_KEY

    plan, props = read_plan(model)
    if plan is None:
        raise InputError(f"{model}: no {PLAN_KEY} metadata (not written by ropeconv?)")
    notes: tuple[str, ...] = ()
    beside = model.parent.parent
    # LoRA merged into it: the output directory's manifest lists the adapters
    adapters = _adapters(_lora_of(beside))
    if base is None:
        recorded = Path(props.get(BASE_KEY, ""))
        if props.get(BASE_KEY) and (recorded / "config.json").is_file() and adapters is not None:
            base = recorded
        elif plan.kind != "absolute" and ((beside / "model.safetensors").is_file()
                                          or (beside / "model.safetensors.index.json").is_file()):
            base, notes = beside, (f"base {recorded} not found; reference built from {beside}'s weights",)
            adapters = []  # the weights beside are merged already
        else:
            raise InputError(f"{model}: its base {recorded} is not there; pass --base BASE_DIR")
    elif not (Path(base) / "config.json").is_file():
        raise InputError(f"--base {base}: not a HuggingFace model directory")
    elif adapters is None:
        raise InputError(f"{model}: a LoRA adapter merged into it is missing or changed")
    refuse_pickle(Path(base), allow_pickle, "the base")
    lora = _merge(adapters, Path(base), allow_pickle) if adapters else None
    fmt = format_of(model)
    assert fmt is not None  # a model.onnx: the onnx format's artifact
    return check_parities([(model, fmt.twin(Path(base), plan, lora))], Path(base), plan,
                          vocab_size(read_config(Path(base))), device=device, tokens=tokens, tolerance=tolerance,
                          notes=notes, progress=progress.note, lora=lora, **probe)[0]


def verify_engine_folder(folder: Path, base: Path | None, *, device, tokens, tolerance, progress, probe: dict,
                         allow_pickle) -> ParityReport:
    """`ropeconv verify OUT/mlx` or `OUT/openvino`: a folder an engine's converter wrote, re-proven on its own with
    the plan and base its marker records (its format's `recorded`), a float32 twin converted from that base where
    the format judges through one. The base may also be the output directory above it, whose safetensors are byte
    copies of the base's (the formats' verify_file)."""
    from ropeconv.checkpoint.hf import read_config
    from ropeconv.extend.from_hf import vocab_size

    folder = Path(folder)
    fmt = format_of(folder)
    assert fmt is not None  # verify_file is reached through the format that claims the folder
    plan, recorded_base = fmt.recorded(folder)
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
    return check_parities([(folder, fmt.twin(Path(base), plan))], Path(base), plan,
                          vocab_size(read_config(Path(base))), device=device, tokens=tokens, tolerance=tolerance,
                          notes=notes, progress=progress.note, **probe)[0]
