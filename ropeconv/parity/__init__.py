"""Parity: the artifact in its real runtime against the reference, on a probe that crosses the original context."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ropeconv.device.memory import free, release
from ropeconv.errors import InputError
from ropeconv.formats import artifact_format
from ropeconv.inputfile import utf8_path
from ropeconv.parity.probe import default_tokens, plan_passes, probe_ids, run_each
from ropeconv.parity.report import ParityReport, Tolerance, compare
from ropeconv.positions import PositionPlan

if TYPE_CHECKING:
    from torch import nn

    from ropeconv.device.placement import Placement

# torch and transformers load only when parity runs: `extend --no-verify`, `inspect` and `methods`
# never touch a tensor and skip their ~1.5 s import.

__all__ = ["ParityReport", "Tolerance", "Twin", "check_parities", "check_parity", "default_tokens", "free",
           "pick_device", "release"]


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
    full_length: bool | None = None,
    placement: Placement | None = None,
    tolerance: Tolerance = Tolerance(),
    notes: tuple[str, ...] = (),
    progress: Callable[[str], None] = lambda _: None,
    lora=None,
    runtime=None,
) -> list[ParityReport]:
    """A report per artifact (e.g. the safetensors directory and the GGUF of one output), against one
    reference computed once: the same probe, plan and base serve them all.

    full_length: a probe from position 0 to the target (None: so on a GPU, up to FULL_LENGTH_GPU_TOKENS, unless
    tokens is given). placement: --max-memory caps and where scratch folders go (disk offload, large logits).
    runtime: the Runtime every artifact runs in (mlx-lm proving a safetensors folder); None: each artifact's format's."""
    with contextlib.ExitStack() as stack:
        # the runtimes take paths as UTF-8 text: a folder named otherwise is reached through an alias
        base = stack.enter_context(utf8_path(base))
        artifacts = [(stack.enter_context(utf8_path(a)), twin) for a, twin in artifacts]
        return _check_parities(artifacts, base, plan, vocab_size, device=device, tokens=tokens,
                               full_length=full_length, placement=placement, tolerance=tolerance, notes=notes,
                               progress=progress, lora=lora, runtime=runtime)


def _check_parities(artifacts, base, plan, vocab_size, *, device, tokens, full_length, placement, tolerance, notes,
                    progress, lora, runtime=None):
    import shutil

    from ropeconv.device.placement import scratch_dir

    _quiet_transformers()
    dev = pick_device(device)
    n_tokens = probe_tokens(plan, dev, tokens, full_length)
    passes = plan_passes(plan, n_tokens)
    ids = probe_ids(vocab_size, n_tokens)
    scratch = scratch_dir(placement)
    try:
        reference, placed = _reference(base, plan, dev, lora, placement, scratch, ids, passes, progress)
        probe = passes[-1]
        probe_note: tuple[str, ...] = ()
        if probe.first_position:
            probe_note = (
                f"probe of {n_tokens} tokens placed at positions {probe.first_position}–{probe.last_position} "
                f"to cross the original context; relative distances reach {n_tokens - 1}",
            )
        elif n_tokens >= plan.target_ctx:
            probe_note = (f"full-length probe: positions 0–{probe.last_position}, relative distances reach the target "
                          f"context {plan.target_ctx}",)
        elif n_tokens > plan.original_ctx:
            probe_note = (f"probe from position 0 to {probe.last_position}; the target context is {plan.target_ctx}",)

        def quantized_reference(artifact: Path):
            """The reference for a quantized file's own rows: the base with the file's decoded weights (None: the
            base reference already is one)."""
            return _quantized_reference(artifact, base, plan, dev, lora, placement, scratch, ids, passes, progress)

        return [_judge(artifact, twin, reference, plan, dev, ids, passes, tolerance, notes + placed, probe_note,
                       progress, placement, scratch, quantized_reference, runtime) for artifact, twin in artifacts]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def probe_tokens(plan: PositionPlan, dev, tokens: int | None, full_length: bool | None) -> int:
    """The probe's length: --tokens, else full length (asked, or by default on a GPU), else default_tokens."""
    from ropeconv.parity.probe import full_length_tokens

    if tokens is not None and full_length:
        raise InputError("--tokens and --full-length: a full-length probe runs to the target context; give one")
    if tokens is not None:
        n_tokens = tokens
    elif full_length or (full_length is None and dev.type == "cuda"):
        n_tokens = full_length_tokens(plan, on_gpu_by_default=not full_length)
    else:
        n_tokens = default_tokens(plan)
    if plan.kind == "absolute" and n_tokens > plan.target_ctx:
        raise InputError(f"--tokens {n_tokens}: the position table has {plan.target_ctx} rows")
    if plan.kind == "alibi" and n_tokens > plan.target_ctx:
        # transformers' MPT builds its bias max_seq_len (= the target) keys long and fails beyond it
        raise InputError(f"--tokens {n_tokens}: beyond the target context {plan.target_ctx} this ALiBi model is "
                         "not defined (MPT's bias ends there)")
    return n_tokens


def _reference(base, plan, dev, lora, placement, scratch, ids, passes, progress):
    """The reference logits per pass, and a note when the reference was placed over several devices."""
    from ropeconv.parity.reference import load_reference
    from ropeconv.parity.runtimes import hf as hf_runtime

    progress(f"reference: base weights with the {plan.method} plan on {dev.type}")
    model: nn.Module | None = load_reference(base, plan, dev, lora, None, placement, scratch, progress)
    try:
        placed = _placement_note(model)
        reference = run_each(passes, lambda p: hf_runtime.pass_logits(model, ids, p, scratch), progress)
    finally:
        model = None  # the last reference: the candidates run in the memory it held
        release()
    return reference, placed


def _quantized_reference(artifact, base, plan, dev, lora, placement, scratch, ids, passes, progress):
    from ropeconv.parity.dequantized import tensors_of
    from ropeconv.parity.reference import load_reference
    from ropeconv.parity.runtimes import hf as hf_runtime

    weights = tensors_of(artifact, base, plan)
    if weights is None:
        return None
    progress(f"reference: {Path(artifact).name}'s own quantized weights, decoded, with the {plan.method} plan")
    model: nn.Module | None = load_reference(base, plan, dev, lora, weights, placement, scratch, progress)
    try:
        return run_each(passes, lambda p: hf_runtime.pass_logits(model, ids, p, scratch), progress)
    finally:
        model = None
        release()


def _placement_note(model) -> tuple[str, ...]:
    plan = getattr(model, "ropeconv_placement", None)
    if plan is None or len(set(plan.device_map.values())) <= 1 and not plan.offloaded:
        return ()
    return (f"transformers models (the reference, and a safetensors candidate alike) were placed by accelerate: "
            f"{plan.describe()}, float32 throughout",)


def _judge(artifact: Path, twin: Twin | None, reference, plan: PositionPlan, dev, ids, passes, tolerance: Tolerance,
           notes: tuple[str, ...], probe_note: tuple[str, ...], progress: Callable[[str], None],
           placement=None, scratch: Path | None = None,
           quantized_reference: Callable[[Path], list | None] = lambda _: None, runtime=None) -> ParityReport:
    """Run one artifact in its runtime (or the one given) over the probe and compare it with the reference logits."""
    from ropeconv.parity.runtimes import runtime_for

    runtime = runtime or runtime_for(artifact)
    runs = _candidate_runs(artifact, twin)
    q_reference = quantized_reference(artifact) if any(quantized for _, _, quantized in runs) else None
    # onnxruntime: the CPU provider always, CUDA as well on a GPU machine (when the weights fit it)
    targets = runtime.targets(dev, Path(artifact))
    notes = notes + runtime.fallback_notes(dev, Path(artifact), targets)
    results = []
    for label, path, quantized in runs:
        try:
            for target in targets:
                on = f" ({target} provider)" if target else ""
                progress(f"candidate: {label} in {runtime.name}{on}")
                results.append((runtime.run_passes(path, dev, ids, passes, target=target, placement=placement,
                                                   scratch=scratch, progress=progress),
                                quantized, runtime.row_prefix(target)))
        finally:
            if path != Path(artifact):
                _remove_twin(path)
    if len(runs) > 1:
        notes = notes + (_twin_note(artifact, twin),)
    ran: tuple[str, ...] = ()
    if runtime.runs_tf4_too:
        ran, tf4_notes = _run_tf4(artifact, ids, passes, results, progress, placement, scratch)
        notes = notes + tf4_notes
    if q_reference is not None:
        notes = notes + ("q- rows: against transformers running the file's own quantized weights (decoded) under the "
                         "plan, so what they measure is the runtime's rounding and the position math, not the "
                         "quantization itself",)

    bands = []
    for candidate, quantized, prefix in results:
        for p, ref, cand in zip(passes, q_reference if quantized and q_reference else reference, candidate):
            bands.extend(compare(p, ref, cand, plan.original_ctx, quantized=quantized, prefix=prefix,
                                 position_noise=runtime.position_noise))
    probe = passes[-1]
    if probe.chunk_tokens:
        micro = runtime.micro_batch_tokens
        notes = notes + (f"prefill in chunks of {probe.chunk_tokens} tokens through the KV cache, reference and "
                         "candidate alike" + (f" ({runtime.name} in its own micro-batches of {micro})"
                                              if micro else ""),)
    if probe.decode_steps and runtime.supports_decode_steps:
        notes = notes + (f"the last {probe.decode_steps} probe tokens were decoded one at a time through the KV "
                         "cache, on both sides",)
    return ParityReport(
        runtime=runtime.name,
        device=runtime.ran_on(dev, targets),
        tokens=ids.shape[1],
        original_ctx=plan.original_ctx,
        first_position=probe.first_position,
        last_position=probe.last_position,
        bands=tuple(bands),
        tolerance=tolerance,
        notes=notes + probe_note,
        ran=ran,
    )


def _run_tf4(artifact: Path, ids, passes, results: list, progress: Callable[[str], None], placement=None,
             scratch: Path | None = None):
    """The same passes in transformers 4.x when a 4.x environment is at hand (rows marked 4.x-): the two majors
    read config.json differently. Returns what ran and the notes."""
    import transformers

    from ropeconv.parity import tf4

    ran = (f"transformers {transformers.__version__}",)
    interpreter = tf4.python()
    if interpreter is None:
        return ran, (tf4.missing_note(),)
    if placement is not None and placement.caps:
        # the 4.x environment has no accelerate: it would hold the whole model in float32, past the cap
        return ran, (f"transformers 4.x not run: under --max-memory {placement.spec} the 4.x environment would hold "
                     "the whole model in float32 (it has no accelerate to place it); verify without the cap to add "
                     "the 4.x rows",)
    attention = tf4.attention_for(Path(artifact))
    progress(f"candidate: {artifact} in transformers 4.x ({interpreter}, cpu)")
    [candidate], version = tf4.run_jobs([tf4.Job(Path(artifact), ids, passes, attention)], interpreter, progress,
                                             scratch)
    results.append((candidate, False, tf4.PREFIX))
    notes = (f"transformers {version} ran it with attn_implementation={attention!r}, as a 4.x user must load it: its "
             "default differs from 5.x for this architecture",) if attention else ()
    return ran + (f"transformers {version}",), notes


def _twin_note(artifact: Path, twin: Twin | None) -> str:
    return artifact_format(artifact).twin_note(Path(artifact), twin)


def _remove_twin(path: Path) -> None:
    if path.is_dir():  # a folder format's twin (an mlx folder)
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        return
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".data").unlink(missing_ok=True)  # an ONNX twin's external weights


def _candidate_runs(artifact: Path, twin: Callable[[Path], Path] | None) -> list[tuple[str, Path, bool]]:
    """(label, file, judged as quantized): an artifact its format's twin policy judges through a float32 twin (a
    quantized GGUF, a float16 ONNX) runs twice, as the twin and as is."""
    artifact = Path(artifact)
    write = artifact_format(artifact).quantized_twin(artifact, twin)  # the format's twin policy
    if write is None:
        return [(str(artifact), artifact, False)]
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
    from ropeconv.device.pick import pick_device as pick

    return pick(requested)
