"""The one streaming loop: every tensor of the base read once, in order, and handed to each format's writer
(formats.Writer).

Memory stays one tensor (plus what a writer holds of it); the writers hash what they write as they write it. On
any failure, or an interrupt, every writer is aborted, which removes what it wrote. Every float tensor is checked
for NaN and infinity before any writer takes it (checkpoint.finite), whichever path each writer then copies or
converts it by, so a non-finite weight is refused by name and nothing is published.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ropeconv.checkpoint import Checkpoint
from ropeconv.checkpoint.finite import check_tensor
from ropeconv.formats.base import Format, Note, Writer
from ropeconv.interrupts import raise_if_interrupted

Step = Callable[[int, int], None]  # (bytes read so far, total bytes)


def stream(ckpt: Checkpoint, writers: Sequence[Writer], step: Step = lambda done, total: None
           ) -> tuple[list[str], dict[str, str]]:
    """Feed every tensor to every writer, then close them in order. Returns the files written (relative to the
    output directory, writer by writer) and the sha256 of those hashed on the way."""
    source = ckpt.open_source()
    total, done = ckpt.total_bytes, 0
    try:
        for entry in ckpt.tensors:
            raise_if_interrupted()  # a signal swallowed in native code or a __del__: stop streaming, not at the end
            merged = ckpt.lora is not None and ckpt.lora.touches(entry.name)
            check_tensor(entry, source, " (with the LoRA merged)" if merged else "")
            for writer in writers:
                writer.write(entry, source)
            done += entry.nbytes
            step(done, total)
        files: list[str] = []
        known: dict[str, str] = {}
        for writer in writers:
            writer.close()
            files.extend(writer.files())
            known.update(writer.sha256())
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    finally:
        source.close()
    return files, known


def open_writers(planned: Sequence[tuple[Format, object]], out: Path, note: Note) -> list[Writer]:
    """Each format's writer for its plan, in order; when one cannot start, those started are aborted."""
    writers: list[Writer] = []
    try:
        for fmt, fplan in planned:
            writers.append(fmt.writer(fplan, out, note))
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    return writers
