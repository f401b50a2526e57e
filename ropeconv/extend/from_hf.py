"""extend from a HuggingFace folder: Checkpoint ─► PositionPlan ─► stream tensors into the exporters ─► parity ─►
card + manifest.

Everything that can be refused is checked before the first byte is written; the output is staged
in a temporary sibling and published only when complete (and, when verified, proven).
"""

from __future__ import annotations

import hashlib
import importlib
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ropeconv import jsontext, methods
from ropeconv.checkpoint import Checkpoint, load_checkpoint
from ropeconv.checkpoint.rope_config import describe_scaling
from ropeconv.errors import InputError, ParityError, UnsupportedError
from ropeconv.export import tokenizer_files
from ropeconv.export.card import (
    base_card_metadata,
    base_names,
    check_card_fields,
    check_name,
    hub_id_from_path,
    model_card,
)
from ropeconv.export.hf_config import extended_config
from ropeconv.export.staging import staged_dir
from ropeconv.export.stream import open_writers, stream
from ropeconv.extend.job import ExtendJob, ExtendResult, gate, job_placement, owner, preflight
from ropeconv.formats import FORMATS, Format, Planning
from ropeconv.lora import plan_merge
from ropeconv.lora.trained_with import checked_adapters
from ropeconv.manifest import write_manifest
from ropeconv.parity import ParityReport, check_parities
from ropeconv.positions import PositionPlan
from ropeconv.progress import Progress


@dataclass(frozen=True)
class Prepared:
    checkpoint: Checkpoint
    plan: PositionPlan
    hf_config: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)  # format name → its plan (formats.Format.plan), in registry order

    def planned(self) -> list[tuple[Format, Any]]:
        return [(FORMATS[name], fplan) for name, fplan in self.outputs.items()]


def prepare(job: ExtendJob, dry_run: bool = False) -> Prepared:
    """All validation; reads headers only, writes nothing. dry_run: the plans are only shown, not written."""
    check_name(job.name)
    check_card_fields(job.card or {})
    ckpt = load_checkpoint(job.base, allow_pickle=job.allow_pickle)
    existing = ckpt.scheme.existing_scaling
    if existing and not job.rebase:
        raise InputError(
            f"{job.base} already carries rope scaling ({describe_scaling(existing)}, original context "
            f"{ckpt.scheme.original_ctx}); a second method would stack on weights tuned for the first — "
            "pass --rebase to replace it, starting from the unscaled positions"
        )
    method = methods.get(job.method)
    methods.check_applies(method, ckpt.scheme, ckpt.arch.model_type)
    plan = method.plan(ckpt.scheme, job.request)
    if job.lora:
        ckpt = replace(ckpt, lora=_plan_lora(job, ckpt, plan))
    try:
        hf_rope = method.hf_rope_parameters(plan)
        hf_config = extended_config(ckpt.config, ckpt.arch, ckpt.scheme, plan, hf_rope)
    except UnsupportedError:
        if any(FORMATS[name].is_checkpoint for name in job.formats):
            raise
        # the graph bakes what transformers' config cannot declare (phi3 + yarn, say): the ONNX directory
        # then carries the base's config.json, for the shapes only
        hf_rope, hf_config = None, dict(ckpt.config)
    vocab_size(ckpt.config)
    if not dry_run:
        ckpt.tokenizer  # noqa: B018 - the strict tokenizer check, for every format, before any output byte
    planning = Planning(ckpt, plan, job, hf_rope, dry_run)
    outputs = {name: fmt.plan(planning) for name, fmt in FORMATS.items() if name in job.formats}  # registry order
    return Prepared(ckpt, plan, hf_config, outputs)


def _plan_lora(job: ExtendJob, ckpt: Checkpoint, plan: PositionPlan):
    return plan_merge(checked_adapters(job.lora, job.lora_trained_with, job.force_method, plan), ckpt.tensors)


def run(job: ExtendJob, progress: Progress) -> ExtendResult:
    """The caller holds the output's lock (extend.run.run)."""
    prepared = prepare(job)
    preflight(job)
    ckpt, plan = prepared.checkpoint, prepared.plan
    if "vllm" in job.verify_in:  # a cell vLLM reads wrongly, no vLLM environment: refused before a byte is written
        from ropeconv.parity import vllm

        vllm.check_folder(plan, prepared.hf_config, job.tokens)
    with staged_dir(job.out, job.force, owner=owner(job)) as tmp:
        _import_aside("huggingface_hub.repocard")  # the model card's library (~0.3 s), loaded while tensors copy
        writers = open_writers(prepared.planned(), tmp, progress.note)
        label = "+".join(job.formats)
        files, known_sha256 = stream(ckpt, writers, lambda done, total: progress.step(label, done, total))
        formats = {fmt.name: fmt.record(fplan, plan) for fmt, fplan in prepared.planned()}
        config_text = jsontext.dumps(prepared.hf_config, "config.json", indent=2, sort_keys=True) + "\n"
        # each folder a runtime loads is self-contained: the ONNX one holds what optimum's ORTModel and
        # onnxruntime-genai look for beside it
        for home in filter(None, (fmt.home(fplan, tmp) for fmt, fplan in prepared.planned())):
            (home / "config.json").write_text(config_text)
            tokenizer_files.copy_aux_files(ckpt, home)
        reports: dict[str, ParityReport] = {}  # by format
        if job.verify:
            artifacts = {fmt.name: (fmt.artifact(tmp, formats[fmt.name]), fmt.twin(ckpt.path, plan, ckpt.lora))
                         for fmt, _ in prepared.planned()}
            found = check_parities(list(artifacts.values()), ckpt.path, plan, vocab_size(ckpt.config),
                                   device=job.device, tokens=job.tokens, tolerance=job.tolerance,
                                   progress=progress.note, lora=ckpt.lora, full_length=job.full_length,
                                   placement=job_placement(job))
            reports = dict(zip(artifacts, found))
            for report in reports.values():
                gate(report, job.out, progress)
        engines = _prove_in_engines(job, prepared, tmp, progress)
        parity = {**{fmt: r.card_summary() for fmt, r in reports.items()},
                  **{name: r.card_summary() for name, r in engines.items()}} or None
        fields = dict(job.card or {})
        fields.setdefault("base_model", hub_id_from_path(ckpt.path))  # a base in huggingface_hub's cache names itself
        base_name, base_ref = base_names(ckpt.path)  # a Hub snapshot: the repo's name; its id at its commit
        card = model_card(base_name, ckpt.arch.model_type, plan, formats, parity,
                          ckpt.lora.to_json() if ckpt.lora else None, fields, base_card_metadata(ckpt.path), job.name,
                          base_ref)
        (tmp / "README.md").write_text(card)
        body = dict(_manifest_body(prepared, formats, parity), recipe=job.recipe)
        if job.hub is not None:  # a base given as a Hub id: the repo, the revision asked, the commit read
            body["base"]["hub"] = job.hub.to_json()
        write_manifest(tmp, body, known_sha256)
    first = next(iter(reports.values()), None)
    return ExtendResult(job.out, plan, tuple(sorted(files)), first, tuple(reports.values()),
                        engines=tuple(engines.values()))


def _prove_in_engines(job: ExtendJob, prepared: Prepared, staged: Path, progress: Progress) -> dict[str, Any]:
    """--verify-in: the staged checkpoint folder proven in each engine after the own runtimes' parity; a failure
    publishes nothing (ParityError, exit 1). The reports by engine name, for the manifest's parity section."""
    found: dict[str, Any] = {}
    if "vllm" in job.verify_in:
        from ropeconv.parity import vllm

        ckpt = prepared.checkpoint
        # the reference: the base's weights under the plan; merged LoRA: the output's own (byte copies, merged)
        base, notes = (staged, ("reference built from this output's own weights (LoRA merged) under the plan",)) \
            if ckpt.lora else (ckpt.path, ())
        report = vllm.prove_folder(staged, prepared.plan, base, vocab_size(ckpt.config), tokens=job.tokens,
                                   notes=notes, progress=progress.note)
        progress.note(report.format())
        if not report.passed:
            raise ParityError(f"parity failed in {report.failed_in()} (max |Δ log-probability| "
                              f"{report.max_abs_logprob:.3g}, tolerance {vllm.MAX_ABS_LOGPROB:g}, top-1 "
                              f"{report.top1:.1%}); nothing written to {job.out}")
        found[vllm.NAME] = report
    return found


def _import_aside(module: str) -> None:
    """Import a module on another thread; whoever imports it later waits for that import (the import lock)
    instead of starting its own. A byte-copying writer spends its time in system calls, so the import mostly
    runs beside it. A failure is left for the real import to report (one line, as every error)."""
    def load() -> None:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001
            pass

    threading.Thread(target=load, name=f"import {module}").start()


def vocab_size(config: dict[str, Any]) -> int:
    size = config.get("vocab_size")
    if not isinstance(size, int) or size <= 0:
        raise InputError("config.json: vocab_size must be a positive integer")
    return size


def _manifest_body(prepared: Prepared, formats: dict[str, Any], parity: dict | None) -> dict[str, Any]:
    ckpt = prepared.checkpoint
    config_bytes = (ckpt.path / "config.json").read_bytes()
    return {
        "base": {
            "path": str(ckpt.path.resolve()),
            "architecture": ckpt.arch.model_type,
            "config_sha256": hashlib.sha256(config_bytes).hexdigest(),
            "tensors": len(ckpt.tensors),
            "tensor_bytes": ckpt.total_bytes,
        },
        "method": prepared.plan.method,
        "plan": prepared.plan.to_json(),
        "lora": ckpt.lora.to_json() if ckpt.lora else None,
        "formats": formats,
        "vocab_size": vocab_size(ckpt.config),
        "parity": parity,
    }
