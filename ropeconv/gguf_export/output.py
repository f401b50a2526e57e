"""The GGUF format's planning, writer (formats.Writer), manifest record, float32 twin and model-card line.

The writer is gguf_export.convert.GgufConversion behind the one protocol; close() hands a type llama.cpp
quantizes to llama.cpp's own quantizer (the float conversion is staged beside the output first)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv.export.card import _fmt
from ropeconv.formats.base import Note, Planning, Serve, Twin
from ropeconv.gguf_export.plan import GgufPlan, gguf_file_name, plan_gguf


@dataclass(frozen=True)
class GgufOutput:
    plan: GgufPlan
    file: str  # in the output directory


def plan(p: Planning) -> GgufOutput:
    job, options = p.job, p.job.options_for("gguf")  # formats.gguf.GgufOptions
    return GgufOutput(plan_gguf(p.checkpoint, p.plan, options.outtype, options.imatrix, job.name,
                                tokens=not p.dry_run),
                      gguf_file_name(p.checkpoint, options.outtype, job.name))


class GgufOutputWriter:
    def __init__(self, out: GgufOutput, directory: Path, note: Note) -> None:
        g = out.plan
        self.out, self.note = out, note
        self.path = Path(directory) / out.file
        self.staged = Path(directory) / f".{out.file}.{g.outtype}.gguf" if g.quantize else self.path
        from ropeconv.gguf_export.convert import GgufConversion  # numpy and the writer: only where one is written

        self._conversion = GgufConversion(g, self.staged)
        self._sha256: dict[str, str] = {}
        self._closed = False

    def write(self, entry, source) -> None:
        self._conversion.write(entry, source)

    def close(self) -> None:
        g = self.out.plan
        self._conversion.close()
        if g.quantize:
            self.note(f"gguf: llama.cpp quantizes the {g.outtype.upper()} conversion to {g.quantize.upper()}"
                      + (f" with {g.imatrix.file_name}" if g.imatrix else ""))
            from ropeconv.gguf_export import quantize as llama_quantize

            llama_quantize.quantize(self.staged, self.path, g.quantize, g.imatrix)
            self.staged.unlink()  # the quantized file is hashed by the manifest, after
        else:
            sha256 = self._conversion.sha256
            assert sha256 is not None  # hashed while written (hash_data=True), set by close()
            self._sha256 = {self.out.file: sha256}
        self._closed = True

    def abort(self) -> None:
        self._conversion.abort()
        self.staged.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        self._closed, self._sha256 = False, {}

    def files(self) -> list[str]:
        return [self.out.file] if self._closed else []

    def sha256(self) -> dict[str, str]:
        return dict(self._sha256)


def writer(out: GgufOutput, directory: Path, note: Note) -> GgufOutputWriter:
    return GgufOutputWriter(out, directory, note)


def record(out: GgufOutput, _plan) -> dict[str, Any]:
    g = out.plan
    arch = g.arch_name
    found = {
        "file": out.file,
        "outtype": g.final_outtype,
        "architecture": arch,
        "declaration": {f.key: f.value for f in g.fields if f.key.startswith(f"{arch}.rope.")
                        or f.key == f"{arch}.context_length"},
        "carriers": [name for name, _ in g.carriers],
    }
    if g.quantize:
        found["quantized_by"] = {"tool": "llama.cpp llama_model_quantize", "from": g.outtype,
                                 "imatrix": g.imatrix.file_name if g.imatrix else None}
    return found


def twin(base: Path, plan, lora=None) -> Twin:
    """A GGUF converted from a HF base: a non-f32 file is judged as a float32 conversion of the same base
    (strict: names, layout, metadata) and as itself against the quantized limits."""
    def write(dst: Path) -> Path:
        from ropeconv.gguf_export.convert import write_f32_twin

        return write_f32_twin(base, plan, dst, lora)

    return write


def card_declaration(rec: dict[str, Any], _plan) -> str:
    keys = ", ".join(f"`{k}`: {_fmt(v)}" for k, v in rec["declaration"].items())
    carriers = f"; carrier tensors {', '.join(rec['carriers'])}" if rec["carriers"] else ""
    return f"llama.cpp (`{rec['file']}`, {rec['outtype']}): {keys}{carriers}."


def serve(out: str, rec: Mapping[str, Any], plan, runtime: str) -> Serve | None:
    """llama.cpp's server on the file: its rope keys carry the plan, so only the context is given."""
    from ropeconv.formats.gguf import FORMAT

    if runtime != FORMAT.runtime:
        return None
    arch = rec.get("architecture")
    carriers = f" and its `{', '.join(rec['carriers'])}` tensor" if rec.get("carriers") else ""
    return Serve("llama.cpp", f"llama-server -m {out}/{rec['file']} -c {plan.target_ctx}", "shell",
                 f"The rope comes from the file's own `{arch}.rope.*` metadata{carriers}: no `--rope-scaling`, "
                 "`--rope-scale`, `--rope-freq-base` or `--yarn-*` flag is needed (one given would override the file). "
                 f"`llama-cli` takes the same `-m` and `-c {plan.target_ctx}`.")
