"""Parse and check a safetensors header without trusting it, at least as strictly as safetensors' own loader.

Layout: u64 little-endian header length N, N bytes of UTF-8 JSON starting with '{' (padded with spaces), then
the data area. Each tensor's data_offsets are relative to the data area and must match dtype × shape exactly;
sorted by offset, the tensors tile the data area from byte 0 with no hole and no overlap, and the last one
ends where the file ends. These are the Rust loader's rules (safetensors' Metadata::validate and
read_metadata: InvalidHeaderStart, InvalidOffset, TensorInvalidInfo, ValidationOverflow,
MetadataIncompleteBuffer): a header whose length is off by a byte, a hole or trailing bytes (a file extended
with truncate()), or a byte-order mark before the JSON is refused here, before any copy, instead of being
byte-copied shifted and failing (or, unverified, passing) later.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ropeconv import jsontext
from ropeconv.errors import InputError
from ropeconv.inputfile import open_regular
from ropeconv.jsontext import is_utf8

DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit (MAX_HEADER_SIZE)
MAX_USIZE = 2**64 - 1  # the loader reads shapes and offsets as usize and refuses a product that overflows it


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
            if header_len > MAX_HEADER_BYTES:
                raise InputError(f"{path}: safetensors header length {header_len} is over the loader's limit of "
                                 f"{MAX_HEADER_BYTES} bytes")
            if 8 + header_len > file_bytes:
                raise InputError(f"{path}: safetensors header length {header_len} exceeds the file ({file_bytes} bytes)")
            raw = fh.read(header_len)
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    header = _parse(path, raw)
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) and is_utf8(v) for v in metadata.values()) \
            or not all(is_utf8(k) for k in metadata):
        raise InputError(f"{path}: safetensors __metadata__ is not an object of strings")
    data_start = 8 + header_len
    data_bytes = file_bytes - data_start
    entries = [_entry(path, name, info, data_start, data_bytes) for name, info in header.items()]
    entries.sort(key=lambda e: (e.offset, e.nbytes, e.name))  # the loader's order: by (begin, end)
    end = data_start
    for e in entries:
        if e.offset < end:
            raise InputError(f"{path}: tensor {_short(e.name)} overlaps the previous tensor's data")
        if e.offset > end:
            raise InputError(f"{path}: tensor {_short(e.name)} starts at data byte {e.offset - data_start}, "
                             f"{e.offset - end} bytes after the previous tensor ends; safetensors requires the "
                             "tensors to follow each other with no gap")
        end = e.offset + e.nbytes
    if end != file_bytes:
        raise InputError(f"{path}: the tensors cover {end - data_start} data bytes but the file has {data_bytes} "
                         f"after its {header_len}-byte header, {file_bytes - end} left over (a wrong header length, "
                         "trailing bytes, or an extended file); safetensors refuses it")
    return entries, dict(metadata)


def _parse(path: Path, raw: bytes) -> dict:
    """The header's JSON object: UTF-8 that starts with '{', as the format's spec says it MUST (a byte-order mark,
    which the loader refuses, and a leading blank are skipped by Python's json, and bytes in UTF-16 decoded), then
    JSON as jsontext reads it (finite, bounded depth)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: safetensors header is not UTF-8 text") from None
    if not text.startswith("{"):
        found = "a UTF-8 byte-order mark" if text.startswith("\ufeff") else _short(text[:16])
        raise InputError(f"{path}: safetensors header must start with '{{', found {found}")
    header = jsontext.loads(text, f"{path}: safetensors header")
    if not isinstance(header, dict):
        raise InputError(f"{path}: safetensors header is not a JSON object")
    return header


def _is_count(value: object) -> bool:
    """A JSON integer in usize's range (not a bool, which Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_USIZE


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
    elements = 1
    for dim in shape:  # the loader's checked product: an overflow on the way is refused even if a 0 follows
        elements *= dim
        if elements > MAX_USIZE:
            break
    expected = elements * DTYPE_BYTES[dtype]
    if expected > MAX_USIZE:
        raise InputError(f"{where}: shape {_short(shape)} overflows a 64-bit byte count")
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
