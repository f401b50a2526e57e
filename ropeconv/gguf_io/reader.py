"""Parse and check a GGUF file into an index, without touching tensor bytes.

Layout (little-endian): magic "GGUF", u32 version, u64 tensor count, u64 KV count; the KV pairs
(string key, u32 value type, value); the tensor infos (string name, u32 n_dims, u64 dims ne0
first, u32 ggml type, u64 offset relative to the data section); zero padding to the alignment;
the data section. Nothing in the header is trusted: every length is checked against the file
before it is read, so a truncated or lying file is one InputError here, not a crash in a copy or a
runtime. Each KV pair keeps its exact bytes so an unchanged key is copied verbatim.

Memory stays within the mapped file plus a constant: a pair's bytes are a view of the map, not a copy,
and its value is decoded only when asked for (a hostile array spanning the whole file costs nothing
until someone reads it); counts are checked against the bytes left before any loop, and the numbers
of keys and tensors are capped far above any real model's.

We parse ourselves rather than through gguf.GGUFReader: it raises bare numpy/ValueErrors on
malformed input, does not expose the raw bytes of a pair, and checks neither offsets nor overlap.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import struct
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from ropeconv.errors import InputError
from ropeconv.gguf_io.types import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from ropeconv.inputfile import open_regular

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32  # what readers assume when general.alignment is absent
SUPPORTED_VERSIONS = (2, 3)  # v1 had 32-bit counts; v2 and v3 share one little-endian layout
MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp refuses more
MAX_NAME_BYTES = 63  # GGML_MAX_NAME is 64 with the terminating NUL: llama.cpp refuses longer tensor names
MAX_KEY_BYTES = 1024  # real keys are dotted names of < 100 bytes
# Real models hold ~1,000 tensors and ~50 keys. Each costs a few hundred bytes of Python objects, so
# the caps bound the index at tens of megabytes whatever the file claims.
MAX_TENSORS = 65536
MAX_KV = 65536
# the fewest bytes one KV pair / tensor info can take: key length + 1-byte key + type + 1-byte value;
# name length + 1-byte name + n_dims + type + offset
MIN_KV_BYTES = 8 + 1 + 4 + 1
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 4 + 8
ALIGNMENT_KEY = "general.alignment"
ARCH_KEY = "general.architecture"
MAX_SCALAR_BYTES = 8 + 256  # a value llama.cpp reads as one: a number or a short type name

SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.FLOAT64: "<d",
    GGUFValueType.BOOL: "<B",
}  # fmt: skip
# Strings are decoded with surrogateescape: a vocabulary may hold byte sequences that are not
# UTF-8, and the writer encodes with the same handler, so a value survives a round trip exactly.
STRING_ERRORS = "surrogateescape"
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class GgufField:
    key: str
    value_type: GGUFValueType
    item_type: GGUFValueType | None  # element type when value_type is ARRAY
    raw: bytes | memoryview = dc_field(repr=False)  # the whole serialized pair: key, type, value
    offset: int = 0  # where the pair starts in the file
    count: int = 1  # items of an array (1 for a scalar)
    value_at: int = 0  # where the value (an array's first item) starts in raw

    @property
    def value_bytes(self) -> int:
        """Bytes the serialized value takes (a string's includes its 8-byte length)."""
        return len(self.raw) - self.value_at

    @functools.cached_property
    def value(self) -> Any:
        """str, int, float, bool, or a list of them; decoded on first use. Any, as json.loads's: what it holds
        depends on the file, and each reader checks the field's value_type before using it."""
        return _decode(self.raw, self.value_at, self.value_type, self.item_type, self.count)


def scalar(src: GgufFile, key: str, default: object = None) -> Any:
    """A key llama.cpp reads as one value: refused when the file holds an array (or an outsized string) there,
    before it is decoded."""
    f = src.field(key)
    if f is None:
        return default
    if f.value_type == GGUFValueType.ARRAY or f.value_bytes > MAX_SCALAR_BYTES:
        raise InputError(f"{src.path}: {key} must be a single value, got "
                         f"{'an array' if f.value_type == GGUFValueType.ARRAY else f'{f.value_bytes} bytes'}")
    return f.value


def _decode(raw, at: int, value_type: GGUFValueType, item_type: GGUFValueType | None, count: int) -> Any:
    if value_type != GGUFValueType.ARRAY:
        return _decode_items(raw, at, value_type, 1)[0]
    assert item_type is not None
    return _decode_items(raw, at, item_type, count)


def _decode_items(raw, at: int, item_type: GGUFValueType, count: int) -> list:
    if item_type == GGUFValueType.STRING:
        out = []
        for _ in range(count):
            (n,) = struct.unpack_from("<Q", raw, at)
            out.append(bytes(raw[at + 8 : at + 8 + n]).decode("utf-8", STRING_ERRORS))
            at += 8 + n
        return out
    values = list(struct.unpack_from(f"<{count}{SCALAR_FORMATS[item_type][-1]}", raw, at))
    return [v != 0 for v in values] if item_type == GGUFValueType.BOOL else values


@dataclass(frozen=True)
class GgufTensor:
    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: ne0 (the contiguous dimension) first
    file: Path
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))


@dataclass(frozen=True)
class GgufFile:
    path: Path
    version: int
    alignment: int
    fields: tuple[GgufField, ...]  # file order
    tensors: tuple[GgufTensor, ...]  # tensor-info order
    data_offset: int  # where the data section starts
    file_size: int
    arch: str  # general.architecture; whether it is supported is the caller's call

    @functools.cached_property
    def _fields_by_key(self) -> dict[str, GgufField]:
        return {f.key: f for f in self.fields}

    @functools.cached_property
    def _tensors_by_name(self) -> dict[str, GgufTensor]:
        return {t.name: t for t in self.tensors}

    def field(self, key: str) -> GgufField | None:
        return self._fields_by_key.get(key)

    def value(self, key: str, default: object = None) -> Any:
        f = self._fields_by_key.get(key)
        return default if f is None else f.value

    def tensor(self, name: str) -> GgufTensor | None:
        return self._tensors_by_name.get(name)


def tensor_nbytes(shape: tuple[int, ...], ggml_type: GGMLQuantizationType) -> int:
    """Bytes of a contiguous tensor; ValueError when the row is not a whole number of blocks."""
    block, type_bytes = GGML_QUANT_SIZES[ggml_type]
    ne0 = shape[0] if shape else 1
    if ne0 % block:
        raise ValueError(f"{ggml_type.name} rows hold whole blocks of {block} but ne0 is {ne0}")
    return math.prod(shape) // block * type_bytes


def align_up(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def ggml_type_of(type_id: int) -> GGMLQuantizationType | None:
    try:
        t = GGMLQuantizationType(type_id)
    except ValueError:
        return None
    return t if t in GGML_QUANT_SIZES else None


def read_gguf(path: Path) -> GgufFile:
    path = Path(path)
    with open_regular(path) as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            if size < 4:
                raise InputError(f"{path}: not a GGUF file (only {size} bytes)")
            # The header is parsed in place from a read-only map: only the pages it spans are read. The
            # map stays open while the index lives: each KV pair's raw bytes are a view of it.
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return _Parser(path, buf, size).parse()


class _Parser:
    def __init__(self, path: Path, buf: mmap.mmap, size: int) -> None:
        self.path, self.buf, self.size, self.pos = path, buf, size, 0

    def fail(self, problem: str) -> InputError:
        return InputError(f"{self.path}: {problem}")

    def take(self, n: int, what: str) -> int:
        """Reserve n bytes at the cursor; returns their start."""
        start = self.pos
        if n > self.size - start:
            raise self.fail(f"truncated GGUF: {what} at byte {start} needs {n} bytes, the file has {self.size}")
        self.pos = start + n
        return start

    def unpack(self, fmt: str, what: str):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def name(self, what: str, limit: int) -> str:
        """A key or tensor name: strict UTF-8, 1 to `limit` bytes."""
        n = self.unpack("<Q", f"length of {what}")
        start = self.take(n, what)
        if not 0 < n <= limit:
            raise self.fail(f"{what} is {n} bytes long (must be 1 to {limit})")
        try:
            return self.buf[start : start + n].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at byte {start} is not valid UTF-8") from None

    def skip_string(self, what: str) -> None:
        self.take(self.unpack("<Q", f"length of {what}"), what)

    def count(self, declared: int, min_item_bytes: int, cap: int, what: str) -> int:
        """A declared count, refused before any loop when its items cannot fit in the bytes left."""
        left = self.size - self.pos
        if declared * min_item_bytes > left:
            raise self.fail(f"truncated GGUF: {what} is {declared}, but the {left} bytes left hold at most "
                            f"{left // min_item_bytes}")
        if declared > cap:
            raise self.fail(f"{what} is {declared} (ropeconv reads at most {cap})")
        return declared

    def parse(self) -> GgufFile:
        magic = self.buf[:4]
        if magic != GGUF_MAGIC:
            raise self.fail(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        self.pos = 4
        version = self.unpack("<I", "version")
        if version & 0xFFFF == 0 and version:
            raise self.fail(f"big-endian GGUF (version field {version:#010x}) is not supported")
        if version not in SUPPORTED_VERSIONS:
            raise self.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
        n_tensors = self.unpack("<Q", "tensor count")
        n_kv = self.unpack("<Q", "key-value count")
        self.count(n_kv, MIN_KV_BYTES, MAX_KV, "key-value count")
        self.count(n_tensors, MIN_TENSOR_INFO_BYTES, MAX_TENSORS, "tensor count")

        fields = self.fields(n_kv)
        by_key = {f.key: f for f in fields}
        alignment = self.alignment(by_key.get(ALIGNMENT_KEY))
        arch = by_key.get(ARCH_KEY)
        if arch is None:
            raise self.fail(f"no {ARCH_KEY} key")
        if arch.value_type != GGUFValueType.STRING:
            raise self.fail(f"{ARCH_KEY} is {arch.value_type.name}, expected STRING")
        if arch.value_bytes > 8 + MAX_NAME_BYTES:
            raise self.fail(f"{ARCH_KEY} is {arch.value_bytes - 8} bytes long; architecture names are short")

        self.count(n_tensors, MIN_TENSOR_INFO_BYTES, MAX_TENSORS, "tensor count")
        infos = self.tensor_infos(n_tensors)
        data_offset = align_up(self.pos, alignment)
        tensors = tuple(self.tensor(info, data_offset, alignment) for info in infos)
        self.check_overlap(tensors)
        return GgufFile(self.path, version, alignment, fields, tensors, data_offset, self.size, arch.value)

    def fields(self, n_kv: int) -> tuple[GgufField, ...]:
        fields: list[GgufField] = []
        seen: set[str] = set()
        for i in range(n_kv):
            start = self.pos
            key = self.name(f"key of KV pair {i}", MAX_KEY_BYTES)
            if key in seen:
                raise self.fail(f"duplicate key {key!r}")
            seen.add(key)
            value_type = self.value_type(f"type of key {key!r}")
            item_type, count = None, 1
            if value_type == GGUFValueType.ARRAY:
                item_type = self.value_type(f"array item type of key {key!r}")
                if item_type == GGUFValueType.ARRAY:
                    raise self.fail(f"key {key!r} is a nested array, which llama.cpp does not support")
                count = self.unpack("<Q", f"array length of key {key!r}")
            value_at = self.pos - start
            what = f"value of key {key!r}" if item_type is None else f"array of key {key!r}"
            self.skip_items(value_type if item_type is None else item_type, count, what)
            raw = memoryview(self.buf)[start : self.pos]
            fields.append(GgufField(key, value_type, item_type, raw, start, count, value_at))
        return tuple(fields)

    def value_type(self, what: str) -> GGUFValueType:
        type_id = self.unpack("<I", what)
        try:
            return GGUFValueType(type_id)
        except ValueError:
            raise self.fail(f"{what} is unknown ({type_id})") from None

    def skip_items(self, item_type: GGUFValueType, count: int, what: str) -> None:
        """Move past `count` items, checking every length against the file; nothing is decoded or kept."""
        if item_type == GGUFValueType.STRING:
            # each string is at least its 8-byte length: refuse an absurd count before looping on it
            self.count(count, 8, self.size, f"item count of {what}")
            buf, size, pos, length = self.buf, self.size, self.pos, _U64.unpack_from
            for i in range(count):  # a vocabulary is ~10⁵ strings: the loop is kept tight
                n = length(buf, pos)[0] if pos + 8 <= size else size
                if n > size - pos - 8:
                    self.pos = pos
                    self.skip_string(what if what.startswith("value") else f"item {i} of {what}")  # raises
                pos += 8 + n
            self.pos = pos
            return
        item_bytes = struct.calcsize(SCALAR_FORMATS[item_type])
        self.count(count, item_bytes, self.size, f"item count of {what}")
        self.take(count * item_bytes, what)

    def alignment(self, f: GgufField | None) -> int:
        if f is None:
            return DEFAULT_ALIGNMENT
        # llama.cpp reads this key as u32 and aborts on any other type
        if f.value_type != GGUFValueType.UINT32:
            raise self.fail(f"{ALIGNMENT_KEY} is {f.value_type.name}, expected UINT32")
        if f.value <= 0 or f.value & (f.value - 1):
            raise self.fail(f"{ALIGNMENT_KEY} is {f.value}, not a power of two")
        return f.value

    def tensor_infos(self, n_tensors: int) -> list[tuple[str, tuple[int, ...], int, int]]:
        infos = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name = self.name(f"name of tensor info {i}", MAX_NAME_BYTES)
            if name in seen:
                raise self.fail(f"duplicate tensor name {name!r}")
            seen.add(name)
            n_dims = self.unpack("<I", f"n_dims of tensor {name!r}")
            if n_dims > MAX_DIMS:
                raise self.fail(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
            start = self.take(8 * n_dims, f"shape of tensor {name!r}")
            shape = struct.unpack_from(f"<{n_dims}Q", self.buf, start)
            type_id = self.unpack("<I", f"type of tensor {name!r}")
            rel_offset = self.unpack("<Q", f"data offset of tensor {name!r}")
            infos.append((name, shape, type_id, rel_offset))
        return infos

    def tensor(self, info: tuple[str, tuple[int, ...], int, int], data_offset: int, alignment: int) -> GgufTensor:
        name, shape, type_id, rel_offset = info
        where = f"tensor {name!r}"
        ggml_type = ggml_type_of(type_id)
        if ggml_type is None:
            raise self.fail(f"{where} has unknown ggml type id {type_id}")
        if any(d >= 2**63 for d in shape):  # ggml's ne is int64
            raise self.fail(f"{where} has a negative or absurd dimension in shape {list(shape)}")
        try:
            nbytes = tensor_nbytes(shape, ggml_type)
        except ValueError as exc:
            raise self.fail(f"{where} has an inconsistent size: {exc}") from None
        if rel_offset % alignment:
            raise self.fail(f"{where} data offset {rel_offset} is not a multiple of the alignment {alignment}")
        offset = data_offset + rel_offset
        if offset + nbytes > self.size:
            raise self.fail(
                f"{where} data ({ggml_type.name} {list(shape)}, {nbytes} bytes at byte {offset}) "
                f"ends past the end of the file ({self.size} bytes; truncated?)"
            )
        return GgufTensor(name, ggml_type, tuple(shape), self.path, offset, nbytes)

    def check_overlap(self, tensors: tuple[GgufTensor, ...]) -> None:
        previous: GgufTensor | None = None
        for t in sorted((t for t in tensors if t.nbytes), key=lambda t: t.offset):
            if previous is not None and t.offset < previous.offset + previous.nbytes:
                raise self.fail(f"tensor {t.name!r} data overlaps tensor {previous.name!r}")
            previous = t
