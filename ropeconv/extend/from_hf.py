"""extend from a HuggingFace folder: Checkpoint ─► PositionPlan ─► stream tensors into the exporters ─► parity ─►
card + manifest.

Everything that can be refused is checked before the first byte is written; the output is staged
in a temporary sibling and published only when complete (and, when verified, proven).
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ropeconv import jsontext
from ropeconv.checkpoint import Checkpoint, load_checkpoint
from ropeconv.checkpoint.rope_config import describe_scaling
from ropeconv.errors import InputError, UnsupportedError
from ropeconv.export.card import base_card_metadata, check_card_fields, check_name, hub_id_from_path, model_card
from ropeconv.export.hf_config import extended_config
from ropeconv.export import tokenizer_files
from ropeconv.export.safetensors_writer import SafetensorsWriter
from ropeconv.export.staging import staged_dir
from ropeconv.export.table import changes_table, output_entry, resampled
from ropeconv.extend.job import ExtendJob, ExtendResult, gate, job_placement, owner, preflight
from ropeconv.formats import ONNX_DIR, ONNX_MODEL_FILE as MODEL_FILE
from ropeconv.lora import plan_merge
from ropeconv.lora.trained_with import checked_adapters
from ropeconv.manifest import write_manifest
from ropeconv.onnx_export import OPSET
from ropeconv import methods
from ropeconv.parity import ParityReport, Twin, check_parities
from ropeconv.positions import PositionPlan
from ropeconv.progress import Progress
from ropeconv.provenance import ATTENTION_KEY, provenance

if TYPE_CHECKING:  # the exporters (numpy, gguf-py, …) are imported where a job writes their format
    from ropeconv.gguf_export.convert import GgufPlan
    from ropeconv.onnx_export.export import OnnxPlan


@dataclass(frozen=True)
class Prepared:
    checkpoint: Checkpoint
    plan: PositionPlan
    hf_rope: dict[str, Any] | None  # None: transformers cannot declare the plan (no safetensors output)
    hf_config: dict[str, Any]
    gguf: GgufPlan | None = None
    onnx: OnnxPlan | None = None


def prepare(job: ExtendJob) -> Prepared:
    """All validation; reads headers only, writes nothing."""
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
        if "safetensors" in job.formats:
            raise
        # the graph bakes what transformers' config cannot declare (phi3 + yarn, say): the ONNX directory
        # then carries the base's config.json, for the shapes only
        hf_rope, hf_config = None, dict(ckpt.config)
    vocab_size(ckpt.config)
    gguf = onnx = None
    if "gguf" in job.formats:
        from ropeconv.gguf_export.convert import plan_gguf

        gguf = plan_gguf(ckpt, plan, job.outtype, job.imatrix, job.name)
    if "onnx" in job.formats:
        from ropeconv.onnx_export.export import plan_onnx

        onnx = plan_onnx(ckpt, plan, job.onnx_dtype, provenance(plan, ckpt.path))
    return Prepared(ckpt, plan, hf_rope, hf_config, gguf, onnx)


def _plan_lora(job: ExtendJob, ckpt: Checkpoint, plan: PositionPlan):
    return plan_merge(checked_adapters(job.lora, job.lora_trained_with, job.force_method, plan), ckpt.tensors)


def run(job: ExtendJob, progress: Progress) -> ExtendResult:
    """The caller holds the output's lock (extend.run.run)."""
    prepared = prepare(job)
    preflight(job)
    ckpt, plan = prepared.checkpoint, prepared.plan
    gguf_name = None
    if prepared.gguf:
        from ropeconv.gguf_export.convert import gguf_file_name

        gguf_name = gguf_file_name(ckpt, job.outtype, job.name)
    with staged_dir(job.out, job.force, owner=owner(job)) as tmp:
        _import_aside("huggingface_hub.repocard")  # the model card's library (~0.3 s), loaded while tensors copy
        files, known_sha256 = _write_tensors(prepared, job, tmp, gguf_name, progress)
        config_text = jsontext.dumps(prepared.hf_config, "config.json", indent=2, sort_keys=True) + "\n"
        # the ONNX directory is self-contained: what optimum's ORTModel and onnxruntime-genai look for beside it
        homes = ([tmp] if "safetensors" in job.formats else []) + ([tmp / ONNX_DIR] if prepared.onnx else [])
        for home in homes:
            (home / "config.json").write_text(config_text)
            _copy_aux_files(ckpt, home)
        if prepared.onnx and prepared.onnx.genai:
            (tmp / ONNX_DIR / "genai_config.json").write_text(jsontext.dumps(prepared.onnx.genai, "genai_config.json",
                                                                             indent=2) + "\n")
        reports: dict[str, ParityReport] = {}  # by format
        if job.verify:
            artifacts = {"safetensors": (tmp, None)} if "safetensors" in job.formats else {}
            if gguf_name:
                artifacts["gguf"] = (tmp / gguf_name, gguf_twin(ckpt.path, plan, ckpt.lora))
            if prepared.onnx:
                artifacts["onnx"] = (tmp / ONNX_DIR / MODEL_FILE, onnx_twin(ckpt.path, plan, ckpt.lora))
            found = check_parities(list(artifacts.values()), ckpt.path, plan, vocab_size(ckpt.config),
                                   device=job.device, tokens=job.tokens, tolerance=job.tolerance,
                                   progress=progress.note, lora=ckpt.lora, full_length=job.full_length,
                                   placement=job_placement(job))
            reports = dict(zip(artifacts, found))
            for report in reports.values():
                gate(report, job.out, progress)
        parity = {fmt: r.card_summary() for fmt, r in reports.items()} or None
        formats = _formats_record(job, prepared, gguf_name)
        fields = dict(job.card or {})
        fields.setdefault("base_model", hub_id_from_path(ckpt.path))  # a base in huggingface_hub's cache names itself
        card = model_card(ckpt.path.name, ckpt.arch.model_type, plan, formats, parity,
                          ckpt.lora.to_json() if ckpt.lora else None, fields, base_card_metadata(ckpt.path), job.name)
        (tmp / "README.md").write_text(card)
        write_manifest(tmp, dict(_manifest_body(prepared, formats, parity), recipe=job.recipe), known_sha256)
    first = next(iter(reports.values()), None)
    return ExtendResult(job.out, plan, tuple(sorted(files)), first, tuple(reports.values()))


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


def _copy_aux_files(ckpt: Checkpoint, home: Path) -> None:
    """Tokenizer, chat template and generation files, as they are except a tokenizer_config.json that names a
    class only transformers 5 has."""
    for name in ckpt.aux_files:
        if name == tokenizer_files.CONFIG:
            raw = (ckpt.path / name).read_bytes()
            (home / name).write_bytes(tokenizer_files.portable_config(raw, "tokenizer.json" in ckpt.aux_files))
        else:
            shutil.copyfile(ckpt.path / name, home / name)


def _write_tensors(prepared: Prepared, job: ExtendJob, out: Path, gguf_name: str | None,
                   progress: Progress) -> tuple[list[str], dict[str, str]]:
    """One pass over the base's tensors, feeding every requested format. Returns the files written and the
    sha256 of those hashed on the way."""
    ckpt = prepared.checkpoint
    plan = prepared.plan
    safetensors = SafetensorsWriter(out, [output_entry(plan, e) for e in ckpt.tensors], job.max_shard_bytes) \
        if "safetensors" in job.formats else None
    gplan = prepared.gguf
    # a type llama.cpp quantizes: the float conversion is staged beside the output first
    gguf_path = out / (f".{gguf_name}.{gplan.outtype}.gguf" if gplan and gplan.quantize else f"{gguf_name}")
    gguf = None
    if gguf_name:
        from ropeconv.gguf_export.convert import GgufConversion

        gguf = GgufConversion(gplan, gguf_path)
    onnx = None
    if prepared.onnx:
        (out / ONNX_DIR).mkdir()
        from ropeconv.onnx_export.export import OnnxExport

        onnx = OnnxExport(prepared.onnx, out / ONNX_DIR / MODEL_FILE)
    label = "+".join(job.formats)
    source = ckpt.open_source()
    total, done = ckpt.total_bytes, 0
    try:
        for entry in ckpt.tensors:
            if safetensors:
                new = resampled(plan, entry, source) if changes_table(plan, entry) else None
                safetensors.write(output_entry(plan, entry), source, new)
            if gguf:
                gguf.write(entry, source)
            if onnx:
                onnx.write(entry, source)
            done += entry.nbytes
            progress.step(label, done, total)
        files = safetensors.close() if safetensors else []
        known = dict(safetensors.sha256) if safetensors else {}  # hashed while written: not read back
        if gguf:
            gguf.close()
            files.append(gguf_name)
            if gplan.quantize:
                progress.note(f"gguf: llama.cpp quantizes the {gplan.outtype.upper()} conversion to "
                              f"{gplan.quantize.upper()}" + (f" with {gplan.imatrix.file_name}" if gplan.imatrix else ""))
                from ropeconv.gguf_export import quantize as llama_quantize

                llama_quantize.quantize(gguf_path, out / gguf_name, gplan.quantize, gplan.imatrix)
                gguf_path.unlink()
            else:
                known[gguf_name] = gguf.sha256
        if onnx:
            progress.note("onnx: checking the graph with onnx.checker")
            files.extend(f"{ONNX_DIR}/{p.name}" for p in onnx.close())
            known.update({f"{ONNX_DIR}/{name}": digest for name, digest in onnx.sha256.items()})
    except BaseException:
        if safetensors:
            safetensors.abort()
        if gguf:
            gguf.abort()
        if onnx:
            onnx.abort()
        raise
    finally:
        source.close()
    return files, known


def gguf_twin(base: Path, plan: PositionPlan, lora=None) -> Twin:
    """A GGUF converted from a HF base: a non-f32 file is judged as a float32 conversion of the same base
    (strict: names, layout, metadata) and as itself against the quantized limits."""
    from ropeconv.gguf_export.convert import write_f32_twin

    return lambda dst: write_f32_twin(base, plan, dst, lora)


def onnx_twin(base: Path, plan: PositionPlan, lora=None) -> Twin:
    """A float16 ONNX is judged strictly through a float32 export of the same base and plan, and as itself
    against the quantized limits."""
    from ropeconv.onnx_export.export import export_file

    return lambda dst: export_file(base, plan, "fp32", dst, lora)


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


def _formats_record(job: ExtendJob, prepared: Prepared, gguf_name: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "safetensors" in job.formats:
        out["safetensors"] = {"declaration": prepared.hf_rope}
    if gguf_name and prepared.gguf:
        g = prepared.gguf
        arch = g.arch_name
        out["gguf"] = {
            "file": gguf_name,
            "outtype": g.final_outtype,
            "architecture": arch,
            "declaration": {f.key: f.value for f in g.fields if f.key.startswith(f"{arch}.rope.")
                            or f.key == f"{arch}.context_length"},
            "carriers": [name for name, _ in g.carriers],
        }
        if g.quantize:
            out["gguf"]["quantized_by"] = {"tool": "llama.cpp llama_model_quantize", "from": g.outtype,
                                           "imatrix": g.imatrix.file_name if g.imatrix else None}
    if prepared.onnx:
        from ropeconv.onnx_export.export import position_math

        o = prepared.onnx
        out["onnx"] = {
            "file": f"{ONNX_DIR}/{MODEL_FILE}",
            "dtype": o.dtype,
            "opset": OPSET,
            "attention": o.metadata[ATTENTION_KEY],
            "external_data": o.external,
            "position_math": position_math(prepared.plan),
            "genai_config": o.genai is not None,
        }
    return out
