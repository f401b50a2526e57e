"""What an output format is to ropeconv: one Format record, and the one protocol every format's writer follows.

A record's hooks are functions: light ones (where the artifact lies, a summary line) in the format's own module,
the rest named by a Ref ("module:function") in the layer that implements them and imported on first call, so the
registry stays as light as a table — `methods`, `inspect` and `--help` read it without loading numpy, gguf-py,
onnx or torch — and below every layer that reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol, TypeAlias, runtime_checkable

# The types named below live in layers above this one (checkpoint, positions); they are written as names only.
TensorEntry: TypeAlias = Any
TensorSource: TypeAlias = Any
Checkpoint: TypeAlias = Any
PositionPlan: TypeAlias = Any


@dataclass(frozen=True)
class Ref:
    """A hook named "module:function" and imported on its first call. The registry sits at the bottom of the
    package's layers and names the writer, twin policy, inspect view and verify entry that the layers above it
    implement (exporters, parity, cli, verify) without importing them: the dependency runs from the record to a
    name, and the code named imports the registry, never the other way round."""

    target: str

    def __call__(self, *args, **kwargs):
        module, _, name = self.target.partition(":")
        return getattr(import_module(module), name)(*args, **kwargs)


Note = Callable[[str], None]  # a progress line (stderr)
Twin = Callable[[Path], Path]  # writes the float32 twin of an artifact at the path given, returns it


@runtime_checkable
class Writer(Protocol):
    """Fed every tensor of the base, in the checkpoint's order, by the one streaming loop (export.stream).

    write(entry, source): take this tensor (a writer skips those its format does not hold);
    close(): finish the files (a format may post-process here: llama.cpp's quantizer, onnx.checker);
    abort(): stop, and remove everything this writer wrote — also after close();
    files(): what close() wrote, relative to the output directory (the result's file list);
    sha256(): file → sha256 of the files hashed while written (ropeconv.hashing), so the manifest need not read
    them back; a file left out is hashed by the manifest after."""

    def write(self, entry: TensorEntry, source: TensorSource) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def files(self) -> list[str]: ...

    def sha256(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class Planning:
    """What a format plans from: the base, the position plan, the job's options, transformers' declaration of
    the plan (None when transformers cannot declare it), and whether the plan is only shown (--dry-run)."""

    checkpoint: Checkpoint
    plan: PositionPlan
    job: Any  # extend.job.ExtendJob (options_for(format), name, max_shard_bytes)
    hf_rope: dict[str, Any] | None
    dry_run: bool = False  # checked as for writing, but nothing a writer alone needs is read (GGUF's token arrays)


@dataclass(frozen=True)
class EvalSpec:
    """How `ropeconv eval` (and search's tokenizer) reach a format's artifact: the --runtime choice that names it,
    where it lies in a folder, and the adapter that runs prompts through it (eval.runtimes)."""

    kind: str  # --runtime's choice, the eval results' and caches' "runtime" key: hf, gguf, onnx
    rank: int  # `--runtime auto` on a folder holding several artifacts takes the lowest rank found
    wanted: str  # what a folder must hold for this choice (the refusal names it)
    find: Callable[[Path], Path | None]  # the artifact in a folder (None: not there); may refuse an ambiguous one
    adapter: Callable[..., Any]  # (ModelRef, device, placement) -> an eval.runtimes.EvalRuntime
    # a bare file with no manifest beside it is known by its name, size and first MiB (its own metadata lies there)
    header_identifies: bool = False


def _none(*_args: Any, **_kwargs: Any) -> Any:
    return None


@dataclass(frozen=True)
class Serve:
    """How the model card tells a user to run an artifact in one engine (its "Long context" section): the command
    exactly as proven, at the plan's target context. A format's `serve` hook returns it."""

    engine: str  # the engine as the card names it: "llama.cpp", "vLLM", "transformers"
    command: str  # what to run, one or more lines, naming the artifact under the output folder given
    language: str = "shell"  # the code block's language: shell or python
    note: str = ""  # one or two sentences under it: what the rope needs at run time (normally nothing)


@dataclass(frozen=True)
class Format:
    name: str  # --to, the manifest's and the parity report's key, the capability matrix's column
    suffix: str | None  # the artifact is one file with this suffix; None: a folder (config.json beside it)
    runtime: str  # the runtime a parity check runs it in (ParityReport.runtime)
    library: str  # the model card's library_name when it is the first format written
    from_gguf: bool = False  # a GGUF base can be written in it (retrofitted in place of a conversion)
    # the artifact is a transformers folder: its config.json must declare the plan, it is loaded as a checkpoint,
    # and its tensors are the base's (LoRA merged) unless the position table was resampled
    is_checkpoint: bool = False
    proof: str = ""  # the model card's line for what its parity check runs

    # --- hooks (functions of the format module; heavy imports inside) ---
    # plan(Planning) -> the format's plan, everything refusable checked; nothing written
    plan: Callable[[Planning], Any] = _none
    # writer(format plan, staged output directory, note) -> Writer
    writer: Callable[[Any, Path, Note], Writer] = _none
    # home(format plan, output directory) -> the folder that gets config.json and the tokenizer files, or None
    home: Callable[[Any, Path], Path | None] = _none
    # record(format plan, PositionPlan) -> the manifest's formats[name] entry
    record: Callable[[Any, PositionPlan], dict[str, Any]] = _none
    # artifact(output directory, manifest record) -> the path the runtime loads (a file, or the folder itself)
    artifact: Callable[[Path, Mapping[str, Any]], Path] = lambda out, record: out
    # twin(base dir, PositionPlan, lora merge) -> how a non-float32 artifact's float32 twin is written from a HF
    # base (None: judged as it is)
    twin: Callable[..., Twin | None] = _none
    # quantized_twin(artifact, twin or None) -> the twin writer parity runs for the strict check, None: not needed
    quantized_twin: Callable[[Path, Twin | None], Twin | None] = _none
    # twin_note(artifact, twin) -> the parity report's note on what ran for the strict check
    twin_note: Callable[[Path, Twin | None], str] = lambda artifact, twin: ""
    # dequantized(artifact, base, plan) -> the artifact's quantized tensors decoded, or None
    dequantized: Callable[..., Any] = _none
    # the parity runtime module (NAME, run_passes) that loads the artifact, by its module name
    runtime_module: str = ""
    # recorded(artifact) -> (PositionPlan | None, base path | None) as the file itself records them
    recorded: Callable[[Path], tuple[Any, Any]] = lambda artifact: (None, None)
    # inspect(artifact, as_json) -> exit code: `ropeconv inspect` of the artifact
    inspect: Callable[[Path, bool], int] | None = None
    # summary(manifest record) -> the line `ropeconv inspect` shows for it under an output folder
    summary: Callable[[dict[str, Any]], str] = lambda record: str(record.get("file", ""))
    # verify_file(artifact, base, **probe) -> ParityReport: `ropeconv verify` of the artifact on its own
    verify_file: Callable[..., Any] | None = None
    # card_declaration(manifest record, PositionPlan) -> the model card's line on how the file declares the plan
    card_declaration: Callable[[dict[str, Any], PositionPlan], str | None] = _none
    # serve(output folder as the card names it, manifest record, PositionPlan, runtime) -> Serve | None: the command
    # that runs the artifact at the plan's target context in `runtime` — the format's own (Format.runtime), or, for the
    # checkpoint format, another engine whose proof of the folder the manifest records under the engine's name
    # (parity["vllm"], by `extend --verify-in vllm`). The card shows it only when that parity passed, with the record's
    # figures; None (the default): no command for that runtime
    serve: Callable[[str, Mapping[str, Any], PositionPlan, str], Serve | None] = _none
    # how `ropeconv eval` finds and runs the artifact; None: eval does not take this format
    eval: EvalSpec | None = None
    # the format's own options: a frozen dataclass of optionfields.option fields (GGUF's outtype and imatrix, ONNX's
    # dtype), read by the CLI's flags, the recipe's output items and the job (ExtendJob.options_for); None: none
    options_group: type | None = None
    # matrix_note() -> the capability matrix's note under this format's column
    matrix_note: Callable[[], str] = lambda: ""
    # family_refusal(family record, method module, sample plan or None) -> why the capability matrix refuses the
    # family's cell in this format (no layout, a declaration its loader rejects), or None; the sample plan is a
    # callable (made only when needed), returning None where the method makes no rope plan for the family
    family_refusal: Callable[[Any, Any, Callable[[], Any]], str | None] = lambda family, method, plan: None
    # hub_quantized(manifest record) -> the Hub's base_model_relation "quantized" (when no checkpoint is beside it)
    hub_quantized: Callable[[dict[str, Any]], bool] = lambda record: False
    # claims(folder) -> the folder is this format's artifact (a format whose artifact is a folder, suffix None, other
    # than the checkpoint's: format_of finds it by this, light and without reading weights)
    claims: Callable[[Path], bool] = lambda path: False
