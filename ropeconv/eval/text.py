"""A calibration text the user gives as --text: a regular file of UTF-8 text, read up to a byte budget.

Scoring needs the first few windows of the text, not a whole book: a tokenizer holds about 11 bytes of memory
per byte of text (a 300 MB text aborted at 3.3 GB), so a caller that scores the start of the text reads only a
prefix, cut at a line end in the last quarter of the budget (else a space there, else after the last whole
character), so every token but the last few is the one the whole text would give.
"""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass
from pathlib import Path

from ropeconv.errors import InputError
from ropeconv.inputfile import open_regular

READ_CHUNK_BYTES = 1 << 20
# what scoring the start of a text reads (search, eval ppl without --stride): a budget per token of the windows
TEXT_BYTES_PER_TOKEN = 32  # English averages ~4 bytes a token in a BPE vocabulary
MIN_TEXT_BYTES = 1 << 20  # a book of up to 1 MiB is read whole
MAX_TEXT_BYTES = 64 << 20  # tokenizing it peaks near 0.7 GB (a 300 MB text took 3.3 GB); also --stride's whole-text cap


def text_bytes(window_tokens: int, windows: int) -> int:
    """The bytes of --text read for `windows` windows of `window_tokens` from its start."""
    return min(MAX_TEXT_BYTES, max(MIN_TEXT_BYTES, TEXT_BYTES_PER_TOKEN * window_tokens * windows))


@dataclass(frozen=True)
class Text:
    text: str
    bytes_read: int  # the bytes `text` came from: all of the file, or its first bytes_read
    file_bytes: int

    @property
    def complete(self) -> bool:
        return self.bytes_read == self.file_bytes


def read_text(path: Path, max_bytes: int, flag: str = "--text") -> Text:
    """The file's text, or its first ≤ max_bytes bytes cut at a line end (then a space, then a character)."""
    if not os.path.lexists(path):
        raise InputError(f"{flag} {path}: file not found")
    try:
        opened = open_regular(path)
    except InputError as exc:  # a FIFO, a device, a directory: refused without blocking on it
        raise InputError(f"{flag} {exc}") from None
    with opened as fh:
        try:
            file_bytes = os.fstat(fh.fileno()).st_size
            data = _read_upto(fh, max_bytes + 1)  # one byte more: whether the file ends inside the budget
        except OSError as exc:
            raise InputError(f"{flag} {path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        data = _cut(data[:max_bytes])
    else:
        file_bytes = len(data)  # what was there when read (a file that shrank or grew meanwhile)
    try:
        text = codecs.getincrementaldecoder("utf-8")("strict").decode(data, final=len(data) == file_bytes)
    except UnicodeDecodeError as exc:
        raise InputError(f"{flag} {path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if not text or text.isspace():
        raise InputError(f"{flag} {path}: empty" if file_bytes == 0 or len(data) == file_bytes else
                         f"{flag} {path}: the first {len(data)} bytes are blank")
    return Text(text, len(text.encode("utf-8")), file_bytes)


def _read_upto(fh, limit: int) -> bytes:
    parts, got = [], 0
    while got < limit:
        chunk = fh.read(min(READ_CHUNK_BYTES, limit - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _cut(data: bytes) -> bytes:
    """The prefix up to and with its last line end in its last quarter, else its last space there; else all of it
    (the decoder then drops a character cut in half)."""
    for sep in (b"\n", b" "):
        end = data.rfind(sep, len(data) * 3 // 4)
        if end >= 0:
            return data[: end + 1]
    return data
