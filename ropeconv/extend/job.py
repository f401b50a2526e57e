"""The extend job, its result, and what both flows (HF folder, GGUF file) check the same way: the formats a
base can take, the target, where parity may place the models, and the gate a parity report must pass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ropeconv.device.placement import Placement, check_fits, parse_max_memory
from ropeconv.errors import InputError, ParityError
from ropeconv.export.staging import check_target
from ropeconv.formats import FORMATS as REGISTRY
from ropeconv.formats import is_gguf
from ropeconv.hub.base import HubBase
from ropeconv.methods.base import ExtendRequest
from ropeconv.parity import ParityReport, Tolerance, pick_device
from ropeconv.positions import PositionPlan
from ropeconv.progress import Progress
from ropeconv.sizes import DEFAULT_MAX_SHARD_BYTES

FORMATS = tuple(REGISTRY)  # the matrix's columns


# the engines `extend --verify-in` proves the checkpoint output in after the own runtimes (verify's --runtime names)
VERIFY_ENGINES = ("vllm",)


@dataclass(frozen=True)
class ExtendJob:
    base: Path
    method: str
    request: ExtendRequest
    out: Path
    formats: tuple[str, ...] = ("safetensors",)
    # each chosen format's own options (its record's options_group: GGUF's outtype and imatrix, ONNX's dtype)
    format_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    force: bool = False
    rebase: bool = False
    allow_pickle: bool = False
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    verify: bool = True
    lora: tuple[Path, ...] = ()  # PEFT adapter directories merged into the base, in order
    lora_trained_with: str | None = None  # METHOD[:FACTOR] for adapters that record no rope scaling
    force_method: bool = False  # merge even when an adapter was trained under another scaling
    recipe: dict[str, Any] | None = None  # {file, sha256} of the recipe this job came from, for the manifest
    hub: HubBase | None = None  # the base was a Hub id: what was asked and the commit fetched (the manifest's)
    card: dict[str, Any] | None = None  # model-card fields: title, description, license, tags, base_model
    name: str | None = None  # the output model's name: GGUF general.name and file name, the card's title
    push: str | None = None  # the Hub repo the published output is uploaded to (--push-to-hub)
    private: bool = True  # the visibility create_repo asks for
    device: str | None = None
    tokens: int | None = None
    tolerance: Tolerance = field(default_factory=Tolerance)
    full_length: bool | None = None  # a probe from position 0 to the target (None: so on a GPU, up to 32k)
    max_memory: str | None = None  # --max-memory caps for the transformers reference and candidate
    verify_in: tuple[str, ...] = ()  # engines the checkpoint output is also proven in before publishing (vllm)

    def options_for(self, fmt: str) -> Any:
        """The format's options group as the job sets it (its defaults when the job sets none)."""
        found = self.format_options.get(fmt)
        if found is None:
            group = REGISTRY[fmt].options_group
            found = group() if group is not None else None
        return found


@dataclass(frozen=True)
class ExtendResult:
    out: Path
    plan: PositionPlan
    files: tuple[str, ...]
    parity: ParityReport | None
    reports: tuple[ParityReport, ...] = ()
    pushed: Any = None  # hub.push.Pushed, when the job pushed the output
    engines: tuple[Any, ...] = ()  # the --verify-in engines' reports (parity.vllm.VllmReport), after the own ones


def formats_for(base: Path) -> tuple[str, ...]:
    """What the base can be written as, read from the registry when asked (a format registered later counts)."""
    return tuple(f.name for f in REGISTRY.values() if f.from_gguf or not is_gguf(base))


def parse_formats(text: str | None, base: Path) -> tuple[str, ...]:
    allowed = formats_for(base)
    if text is None:
        return allowed[:1]
    formats = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in allowed]
    if not formats or unknown:
        kind = "a GGUF base" if is_gguf(base) else "a HuggingFace base"
        raise InputError(f"--to {text!r}: {kind} can be written as {', '.join(allowed)}")
    return formats


def preflight(job: ExtendJob) -> None:
    """The checks every output path makes after planning and before writing a byte."""
    check_overlap(job)
    check_target(job.out, job.force, kind="file" if is_gguf(job.base) else "dir", owner=owner(job))
    if job.verify:
        # --device cuda without CUDA, a bad cap, or a model that cannot run under the caps: refused now
        placed = check_fits(job.base, pick_device(job.device), job_placement(job))
        if job.lora and placed.offloaded:
            raise InputError(f"--lora with a reference that does not fit in memory ({placed.describe()}): merging "
                             "into offloaded weights is not supported; give --max-memory room for the whole model")
        if job.tokens is not None and job.full_length:
            raise InputError("--tokens and --full-length: a full-length probe runs to the target context; give one")


def check_overlap(job: ExtendJob) -> None:
    base, out = job.base.resolve(), job.out.resolve()
    if out == base or base in out.parents or out in base.parents:
        raise InputError(f"-o {job.out} overlaps the base {job.base}; write the output elsewhere")


def job_placement(job: ExtendJob) -> Placement:
    """--max-memory caps; disk offload and large logits in a scratch folder beside the output."""
    return parse_max_memory(job.max_memory).beside(job.out)


def owner(job: ExtendJob) -> str | None:
    """The recipe file (resolved path) a recipe job comes from: its own previous output needs no --force."""
    return (job.recipe or {}).get("file")


def gate(report: ParityReport, out: Path, progress: Progress) -> None:
    """Show the report; a failed one stops the staged output from being published."""
    progress.note(report.format())
    if not report.passed:
        raise ParityError(
            f"parity failed in {report.failed_in()} (max |Δlogit| {report.max_abs_logit:.3g}, "
            f"top-1 {report.top1:.1%}); "
            f"nothing written to {out}"
        )
