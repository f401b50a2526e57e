"""Parse and check a safetensors header without trusting it.

Layout: u64 little-endian header length N, N bytes of JSON, then the data area. Each tensor's
data_offsets are relative to the data area and must match dtype × shape exactly and stay inside
the file; a header that lies about sizes or a truncated file is caught here, before any copy.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ropeconv import jsontext
from ropeconv.errors import InputError
from ropeconv.jsontext import is_utf8
from ropeconv.inputfile import open_regular

DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int


def read_header(path: Path) -> tuple[list[TensorEntry], dict[str, str]]:
    """Entries in data order, and the __metadata__ map."""
    with open_regular(path) as fh:
        try:
            file_bytes = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise InputError(f"{path}: truncated safetensors file ({file_bytes} bytes, no header)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > file_bytes:
                raise InputError(f"{path}: safetensors header length {header_len} exceeds the file ({file_bytes} bytes)")
            raw = fh.read(header_len)
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    header = jsontext.loads(raw, f"{path}: safetensors header")
    if not isinstance(header, dict):
        raise InputError(f"{path}: safetensors header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) and is_utf8(v) for v in metadata.values()) \
            or not all(is_utf8(k) for k in metadata):
        raise InputError(f"{path}: safetensors __metadata__ is not an object of strings")
    data_start = 8 + header_len
    data_bytes = file_bytes - data_start
    entries = [_entry(path, name, info, data_start, data_bytes) for name, info in header.items()]
    entries.sort(key=lambda e: (e.offset, e.name))
    end = data_start
    for e in entries:
        if e.offset < end and e.nbytes:
            raise InputError(f"{path}: tensor {_short(e.name)} overlaps the previous tensor's data")
        end = max(end, e.offset + e.nbytes)
    return entries, dict(metadata)


def _is_count(value: object) -> bool:
    """A JSON integer ≥ 0 (not a bool, which Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(path: Path, name: str, info: object, data_start: int, data_bytes: int) -> TensorEntry:
    where = f"{path}: tensor {_short(name)}"
    if not is_utf8(name):
        raise InputError(f"{where}: the name holds a lone surrogate escape, which safetensors cannot read back")
    if not isinstance(info, dict):
        raise InputError(f"{where}: header entry is not an object")
    dtype = info.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise InputError(f"{where}: dtype {_short(dtype)} is not one of {', '.join(DTYPE_BYTES)}")
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise InputError(f"{where}: shape {_short(shape)} is not a list of non-negative integers")
    offsets = info.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise InputError(f"{where}: data_offsets {_short(offsets)} are not [begin, end]")
    begin, end = offsets
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != expected:
        raise InputError(
            f"{where}: header says {end - begin} bytes but dtype {dtype} × shape {_short(shape)} needs {expected}"
        )
    if end > data_bytes:
        raise InputError(f"{where}: data ends at byte {end} but the file has {data_bytes} data bytes (truncated?)")
    return TensorEntry(name, dtype, tuple(shape), path, data_start + begin, expected)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
