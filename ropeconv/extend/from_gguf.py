"""extend from a GGUF file: rewrite llama.cpp's rope metadata, add carrier tensors, copy every
existing tensor's bytes unchanged (quantized or not), prove it in llama.cpp, publish atomically.

The plan travels inside the file (`ropeconv.*` keys, which llama.cpp ignores), so `ropeconv verify
out.gguf` needs no sidecar.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ropeconv import jsontext, methods
from ropeconv.checkpoint.gguf_scheme import CARRIER_TENSORS, gguf_arch, read_gguf_scheme
from ropeconv.checkpoint.rope_config import describe_scaling
from ropeconv.errors import InputError, UnsupportedError
from ropeconv.export.card import check_name
from ropeconv.export.staging import staged_file
from ropeconv.extend.job import ExtendJob, ExtendResult, formats_for, gate, is_gguf, job_placement, preflight
from ropeconv.families.lookup import GgufArchSpec
from ropeconv.gguf_io.reader import GgufFile, read_gguf, scalar
from ropeconv.gguf_io.types import VALUE_TYPES, GGUFValueType
from ropeconv.gguf_io.vocabulary import check_vocabulary
from ropeconv.lora.trained_with import checked_adapters
from ropeconv.parity import ParityReport, check_parity
from ropeconv.positions import AbsoluteScheme, AlibiScheme, PositionPlan, RopePlan
from ropeconv.progress import Progress
from ropeconv.provenance import HUB_KEY, LORA_KEY, provenance
from ropeconv.provenance.gguf import gguf_fields

if TYPE_CHECKING:  # numpy, gguf-py and the LoRA merge are imported when used: a dry run reads the header only
    import numpy as np

    from ropeconv.lora.gguf_base import GgufLora


@dataclass(frozen=True)
class GgufPrepared:
    src: GgufFile
    arch: GgufArchSpec
    plan: RopePlan
    set_fields: dict[str, tuple]
    drop_keys: frozenset[str]
    add_tensors: dict[str, np.ndarray]
    drop_tensors: frozenset[str] = frozenset()
    lora: GgufLora | None = None  # adapters merged into float tensors


def prepare(job: ExtendJob) -> GgufPrepared:
    """All validation; reads the GGUF's header only, writes nothing."""
    check_name(job.name)
    if job.card:
        flags = {"title": "--card-title", "license": "--license", "tags": "--tag", "base_model": "--base-model"}
        given = ", ".join(flags.get(k, f"card {k}") for k in sorted(job.card))
        raise InputError(f"{given}: model-card options, but a GGUF base is written as one .gguf file, which has no "
                         "model card (--name sets its general.name)")
    src = read_gguf(job.base)
    arch = gguf_arch(src)
    if arch.position != "rope":
        refuse_unroped(job, src, arch)
    scheme = read_gguf_scheme(src)
    check_vocabulary(src)  # copied unchanged: a vocabulary llama.cpp or transformers cannot load is refused now
    if scheme.existing_scaling and not job.rebase:
        raise InputError(
            f"{job.base} already carries rope scaling ({describe_scaling(scheme.existing_scaling)}, original "
            f"context {scheme.original_ctx}); a second method would stack on weights tuned for the first — "
            "pass --rebase to replace it, starting from the unscaled frequencies"
        )
    if scheme.existing_scaling and scheme.existing_scaling.get("original_unknown") and job.request.original_ctx is None:
        raise InputError(f"{job.base}: its scaling does not record the original context (context_length "
                         f"{scheme.declared_ctx} is the extended one); pass --original-ctx N with --rebase")
    method = methods.get(job.method)
    plan = method.plan(scheme, job.request)
    declaration = method.gguf_declaration(plan, arch)
    a = arch.name
    # every rope extension key the base had is replaced by this declaration
    drop = {f.key for f in src.fields if f.key.startswith(f"{a}.rope.scaling.") or f.key.startswith("ropeconv.")}
    set_fields: dict[str, tuple] = {
        f"{a}.context_length": (GGUFValueType.UINT32, plan.target_ctx),
        f"{a}.rope.freq_base": (GGUFValueType.FLOAT32, scheme.theta),
    }
    for key, (kind, value) in declaration.kv.items():
        set_fields[f"{a}.{key}"] = (VALUE_TYPES[kind], value)
    set_fields.update(gguf_fields(provenance(plan, Path(job.base))))
    if job.hub is not None:  # a one-file output has no manifest: the Hub base it was fetched as is recorded here
        set_fields[HUB_KEY] = (GGUFValueType.STRING, jsontext.dumps(job.hub.to_json(), HUB_KEY, sort_keys=True))
    if job.name:
        set_fields["general.name"] = (GGUFValueType.STRING, job.name)
    drop -= set_fields.keys()
    # carriers of the scaling being replaced (--rebase) would keep acting on the new plan
    stale = {t.name for t in src.tensors if t.name in CARRIER_TENSORS and t.name not in declaration.tensors}
    add = {}
    if declaration.tensors:
        import numpy as np

        add = {name: np.asarray(values, dtype=np.float32) for name, values in declaration.tensors.items()}
    lora = None
    if job.lora:
        from ropeconv.lora.gguf_base import plan_gguf_lora

        lora = plan_gguf_lora(src, checked_adapters(job.lora, job.lora_trained_with, job.force_method, plan))
        set_fields[LORA_KEY] = (GGUFValueType.STRING, jsontext.dumps(lora.merge.to_json(), LORA_KEY, sort_keys=True))
        drop.discard(LORA_KEY)
    return GgufPrepared(src, arch, plan, set_fields, frozenset(drop), add, frozenset(stale), lora)


def refuse_unroped(job: ExtendJob, src: GgufFile, arch: GgufArchSpec) -> None:
    """A GGUF base with ALiBi or a learned position table: every method is refused, with its reason."""
    a = arch.name
    context = scalar(src, f"{a}.context_length")
    heads = scalar(src, f"{a}.attention.head_count")
    if not isinstance(context, int) or context <= 0 or not isinstance(heads, int) or heads <= 0:
        raise InputError(f"{src.path}: {a}.context_length and {a}.attention.head_count must be positive integers")
    scheme: AlibiScheme | AbsoluteScheme
    if arch.position == "alibi":
        scheme = AlibiScheme(n_heads=heads, original_ctx=context, declared_ctx=context)
    else:
        scheme = AbsoluteScheme(table="position_embd.weight", offset=0, original_ctx=context, declared_ctx=context)
    method = methods.get(job.method)
    methods.check_applies(method, scheme, a)
    if method.NAME == "none":
        raise UnsupportedError(f"--method none on a GGUF base would only copy it; to write a {a} GGUF, convert the "
                               "HF checkpoint: ropeconv extend HF_DIR --method none --to gguf")
    # ALiBi: the method's own refusal (llama.cpp cannot scale the slopes)
    method.gguf_declaration(method.plan(scheme, job.request), arch)
    raise UnsupportedError(f"--method {method.NAME} on a {a} GGUF base: resampling a GGUF's position_embd is not "
                           f"supported; convert from the HF checkpoint (ropeconv extend HF_DIR --method "
                           f"{method.NAME} --to gguf)")


def run(job: ExtendJob, progress: Progress | None = None) -> ExtendResult:
    """The caller holds the output's lock (extend.run.run)."""
    progress = progress or Progress(enabled=False)
    if job.formats not in (formats_for(job.base), ()):  # retrofitted in place: the one format a GGUF base takes
        raise InputError(f"a GGUF base can only be written as GGUF (got --to {','.join(job.formats)})")
    if not is_gguf(job.out):
        raise InputError(f"-o {job.out}: a GGUF base is written to a .gguf file")
    prepared = prepare(job)
    preflight(job)
    report = None
    with staged_file(job.out, job.force) as tmp:
        progress.note(f"gguf: rewriting metadata, copying {len(prepared.src.tensors)} tensors")
        merged = prepared.lora.transforms() if prepared.lora else None
        if merged:
            progress.note(f"gguf: merging LoRA into {len(merged)} tensors")
        from ropeconv.gguf_io.writer import rewrite_gguf

        rewrite_gguf(prepared.src, tmp, set_fields=prepared.set_fields, drop_keys=set(prepared.drop_keys),
                     add_tensors=prepared.add_tensors, drop_tensors=set(prepared.drop_tensors),
                     transform_tensors=merged)
        if job.verify:
            report = verify_gguf_file(tmp, Path(job.base), prepared.plan, device=job.device, tokens=job.tokens,
                                      tolerance=job.tolerance, progress=progress,
                                      lora=prepared.lora.merge if prepared.lora else None,
                                      full_length=job.full_length, placement=job_placement(job))
            gate(report, Path(job.out), progress)
    return ExtendResult(Path(job.out), prepared.plan, (Path(job.out).name,), report)


def gguf_vocab_size(src: GgufFile) -> int:
    size = scalar(src, f"{src.arch}.vocab_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    tokens = src.field("tokenizer.ggml.tokens")
    if tokens is not None and tokens.item_type == GGUFValueType.STRING and tokens.count:
        return tokens.count
    raise InputError(f"{src.path}: cannot tell the vocabulary size")


def verify_gguf_file(artifact: Path, base: Path, plan: PositionPlan, *, device, tokens, tolerance, progress,
                     notes: tuple[str, ...] = (), lora=None, **probe) -> ParityReport:
    """probe: check_parities' full_length and placement."""
    return check_parity(artifact, base, plan, gguf_vocab_size(read_gguf(artifact)), device=device, tokens=tokens,
                        tolerance=tolerance, notes=notes, progress=progress.note, lora=lora, **probe)
