"""Parity: the artifact in its real runtime against the reference, on a probe that crosses the original context."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Callable, Sequence

from ropeconv.parity.probe import default_tokens, plan_passes, probe_ids
from ropeconv.parity.report import ParityReport, Tolerance, compare
from ropeconv.errors import InputError
from ropeconv.positions import PositionPlan

# torch and transformers load only when parity runs: `extend --no-verify`, `inspect` and `methods`
# never touch a tensor and skip their ~1.5 s import.

__all__ = ["ParityReport", "Tolerance", "Twin", "check_parities", "check_parity", "default_tokens", "pick_device"]


Twin = Callable[[Path], Path]  # writes a float32 twin of a non-f32 GGUF artifact to the path it is given


def check_parity(
    artifact: Path,
    base: Path,
    plan: PositionPlan,
    vocab_size: int,
    *,
    twin: Twin | None = None,
    **options,
) -> ParityReport:
    """One artifact; options as check_parities. twin default: the artifact with its tensors dequantized."""
    return check_parities([(artifact, twin)], base, plan, vocab_size, **options)[0]


def check_parities(
    artifacts: Sequence[tuple[Path, Twin | None]],
    base: Path,
    plan: PositionPlan,
    vocab_size: int,
    *,
    device: str | None = None,
    tokens: int | None = None,
    tolerance: Tolerance = Tolerance(),
    notes: tuple[str, ...] = (),
    progress: Callable[[str], None] = lambda _: None,
    lora=None,
) -> list[ParityReport]:
    """A report per artifact (e.g. the safetensors directory and the GGUF of one output), against one
    reference computed once: the same probe, plan and base serve them all."""
    from ropeconv.parity.reference import load_reference
    from ropeconv.parity.runtimes import hf as hf_runtime

    _quiet_transformers()
    dev = pick_device(device)
    n_tokens = tokens or default_tokens(plan)
    if plan.kind == "absolute" and n_tokens > plan.target_ctx:
        raise InputError(f"--tokens {n_tokens}: the position table has {plan.target_ctx} rows")
    if plan.kind == "alibi" and n_tokens > plan.target_ctx:
        # transformers' MPT builds its bias max_seq_len (= the target) keys long and fails beyond it
        raise InputError(f"--tokens {n_tokens}: beyond the target context {plan.target_ctx} this ALiBi model is "
                         "not defined (MPT's bias ends there)")
    passes = plan_passes(plan, n_tokens)
    ids = probe_ids(vocab_size, n_tokens)

    progress(f"reference: base weights with the {plan.method} plan on {dev.type}")
    model = load_reference(base, plan, dev, lora)
    reference = [hf_runtime.logits(model, ids[:, : p.n_tokens], p.position_ids(), p.decode_steps) for p in passes]
    free(model)

    probe = passes[-1]
    probe_note: tuple[str, ...] = ()
    if probe.first_position:
        probe_note = (
            f"probe of {n_tokens} tokens placed at positions {probe.first_position}–{probe.last_position} "
            f"to cross the original context; relative distances reach {n_tokens - 1}",
        )
    def quantized_reference(artifact: Path):
        """The reference for a quantized file's own rows: the base with the file's decoded weights (None: the
        base reference already is one)."""
        from ropeconv.parity.dequantized import tensors_of

        weights = tensors_of(artifact, base, plan)
        if weights is None:
            return None
        progress(f"reference: {Path(artifact).name}'s own quantized weights, decoded, with the {plan.method} plan")
        model = load_reference(base, plan, dev, lora, weights)
        logits = [hf_runtime.logits(model, ids[:, : p.n_tokens], p.position_ids(), p.decode_steps) for p in passes]
        free(model)
        return logits

    return [_judge(artifact, twin, reference, plan, dev, ids, passes, tolerance, notes, probe_note, progress,
                   quantized_reference) for artifact, twin in artifacts]


def _judge(artifact: Path, twin: Twin | None, reference, plan: PositionPlan, dev, ids, passes, tolerance: Tolerance,
           notes: tuple[str, ...], probe_note: tuple[str, ...], progress: Callable[[str], None],
           quantized_reference=lambda _: None) -> ParityReport:
    """Run one artifact in its runtime over the probe and compare it with the reference logits."""
    from ropeconv.parity.runtimes import runtime_for

    runtime = runtime_for(artifact)
    runs = _candidate_runs(artifact, twin)
    q_reference = quantized_reference(artifact) if any(quantized for _, _, quantized in runs) else None
    # onnxruntime: the CPU provider always, CUDA as well on a GPU machine
    providers = runtime.providers(dev) if hasattr(runtime, "providers") else [None]
    results = []
    for label, path, quantized in runs:
        try:
            for provider in providers:
                on = f" ({provider} provider)" if provider else ""
                progress(f"candidate: {label} in {runtime.NAME}{on}")
                extra = {"provider": provider} if provider else {}
                prefix = f"{provider}-" if provider not in (None, "cpu") else ""
                results.append((runtime.run_passes(path, dev, ids, passes, **extra), quantized, prefix))
        finally:
            if path != Path(artifact):
                _remove_twin(path)
    if len(runs) > 1:
        notes = notes + (_twin_note(artifact, twin),)
    if q_reference is not None:
        notes = notes + ("q- rows: against transformers running the file's own quantized weights (decoded) under the "
                         "plan, so what they measure is the runtime's rounding and the position math, not the "
                         "quantization itself",)

    bands = []
    for candidate, quantized, prefix in results:
        for p, ref, cand in zip(passes, q_reference if quantized and q_reference else reference, candidate):
            bands.extend(compare(p, ref, cand, plan.original_ctx, quantized=quantized, prefix=prefix,
                                 position_noise=getattr(runtime, "POSITION_NOISE", 0.0)))
    probe = passes[-1]
    if probe.decode_steps and runtime.NAME != "llama.cpp":
        notes = notes + (f"the last {probe.decode_steps} probe tokens were decoded one at a time through the KV "
                         "cache, on both sides",)
    return ParityReport(
        runtime=runtime.NAME,
        device="+".join(p for p in providers if p) if providers != [None] else dev.type,
        tokens=ids.shape[1],
        original_ctx=plan.original_ctx,
        first_position=probe.first_position,
        last_position=probe.last_position,
        bands=tuple(bands),
        tolerance=tolerance,
        notes=notes + probe_note,
    )


def _twin_note(artifact: Path, twin: Twin | None) -> str:
    name = Path(artifact).name
    if Path(artifact).suffix == ".onnx":
        from ropeconv.onnx_export.export import DTYPE_KEY
        from ropeconv.onnx_export.metadata import read_metadata

        kind = {"fp16": "float16 compute", "int4": "int4 MatMulNBits weights"}.get(
            read_metadata(Path(artifact)).get(DTYPE_KEY, ""), "not float32")
        return (f"onnxruntime ran a float32 export of the same base and plan for the strict check, and {name} "
                f"({kind}) for the q- rows")
    how = "converted from the base in float32" if twin else "same metadata and carriers, tensors dequantized"
    return f"llama.cpp ran a float32 twin of {name} ({how}) for the strict check, and the file itself for the q- rows"


def _remove_twin(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".data").unlink(missing_ok=True)  # an ONNX twin's external weights


def _candidate_runs(artifact: Path, twin: Callable[[Path], Path] | None) -> list[tuple[str, Path, bool]]:
    """(label, file, judged as quantized): a quantized GGUF or a float16 ONNX runs twice, as a float32 twin and
    as is."""
    artifact = Path(artifact)
    as_is = [(str(artifact), artifact, False)]
    if artifact.suffix == ".onnx":
        from ropeconv.onnx_export.export import DTYPE_KEY
        from ropeconv.onnx_export.metadata import read_metadata

        if twin is None or read_metadata(artifact).get(DTYPE_KEY, "fp32") == "fp32":
            return as_is
        write = twin
    elif artifact.suffix == ".gguf":
        from gguf import GGMLQuantizationType

        from ropeconv.gguf_io.reader import read_gguf
        from ropeconv.parity.f32_twin import needs_twin, write_f32_twin

        src = read_gguf(artifact)
        if twin is not None:
            needed = any(t.ggml_type != GGMLQuantizationType.F32 for t in src.tensors)
        else:
            needed = needs_twin(src)
        if not needed:
            return as_is
        write = twin if twin is not None else (lambda dst: write_f32_twin(src, dst))
    else:
        return as_is
    path = artifact.with_name(f".{artifact.name}.f32-twin{artifact.suffix}")
    try:
        write(path)
    except BaseException:
        _remove_twin(path)
        raise
    return [(f"float32 twin of {artifact}", path, False), (str(artifact), artifact, True)]


def _quiet_transformers() -> None:
    # weight-loading progress bars would drown ropeconv's own progress lines
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def pick_device(requested: str | None = None):
    from ropeconv.parity.device import pick_device as pick

    return pick(requested)


def free(model) -> None:
    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
