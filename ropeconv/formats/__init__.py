"""The output formats, one module each (safetensors.py, gguf.py, onnx.py), registered here: a Format record (base.py)
holds a format's name, suffix, planning, writer, twin policy, runtime, provenance, inspect view and verify entry.
Code that needs one of these reads it from the record — found by name (FORMATS), by an artifact's suffix
(format_of) or by what a manifest lists — instead of comparing a format name or a file suffix; the one streaming
loop (stream.py) feeds the writers. Importing this package loads no exporter (numpy, gguf-py, onnx, torch: each
hook imports its own), so `ropeconv methods`, `inspect`, `extend --help` and an extend that writes only
safetensors stay light.

Adding a format is one module here with a FORMAT record, registered below (or register() at run time, as the tests
do), plus the code its Refs name in the layers that implement them (a writer beside the exporters, say).
"""

from __future__ import annotations

from pathlib import Path

from ropeconv.formats import gguf, mlx, onnx, openvino, safetensors
from ropeconv.formats.base import EvalSpec, Format, Planning, Ref, Serve, Writer

__all__ = ["FORMATS", "EvalSpec", "Format", "Planning", "Ref", "Writer", "artifact_format", "checkpoint_format", "format_of",
           "is_gguf", "register", "Serve", "unregister"]

FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add a format (a test's, say); its name and suffix must be new."""
    if fmt.name in FORMATS:
        raise ValueError(f"format {fmt.name!r} is registered already")
    if fmt.suffix is not None and any(f.suffix == fmt.suffix for f in FORMATS.values()):
        raise ValueError(f"format {fmt.name!r}: suffix {fmt.suffix!r} is another format's")
    FORMATS[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    FORMATS.pop(name, None)


for _module in (safetensors, gguf, onnx, mlx, openvino):  # the capability matrix's column order
    register(_module.FORMAT)


def format_of(path: Path) -> Format | None:
    """The format a file is by its suffix, or a folder a format's record claims (an mlx folder); None for anything
    else (a transformers folder, say)."""
    suffix = Path(path).suffix
    found = next((f for f in FORMATS.values() if f.suffix and f.suffix == suffix), None)
    return found or next((f for f in FORMATS.values() if f.claims(Path(path))), None)


def checkpoint_format() -> Format:
    """The format whose artifact is a transformers folder (the output directory itself)."""
    return next(f for f in FORMATS.values() if f.is_checkpoint)


def artifact_format(path: Path) -> Format:
    """The format of an artifact a runtime loads: a file by its suffix, a folder the checkpoint format's."""
    return format_of(path) or checkpoint_format()


def is_gguf(path: Path) -> bool:
    """A GGUF base or artifact (by suffix, as llama.cpp's tools name them): which extend flow a base takes."""
    found = format_of(path)
    return found is not None and found.from_gguf
