"""Streamed GGUF output: header computed up front, then tensors appended one at a time.

The whole header (KV pairs, tensor infos with their offsets) is known before any data is written,
so tensors are streamed in order: untouched ones by a kernel byte copy from the source file, new
ones from memory. Peak memory is one tensor. Each tensor starts at a multiple of the alignment
relative to the data section and is followed by zero padding up to the next one, which is the
exact layout llama.cpp requires (it refuses any other offset). Nothing time- or host-dependent is
written, so the same inputs give the same bytes. Publishing the file atomically is the caller's job.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ropeconv.checkpoint.finite import check_file_range
from ropeconv.checkpoint.sources import copy_range, write_all
from ropeconv.errors import InputError, RopeconvError
from ropeconv.gguf_io.fields import (
    ByteRange,
    KvEntry,
    NewField,
    TensorInfo,
    ggml_type_of_array,  # noqa: F401  (importers of the writer take it from here)
    pack_string,
)
from ropeconv.gguf_io.reader import (
    ALIGNMENT_KEY,
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    MAX_DIMS,
    GgufField,
    GgufFile,
    GgufTensor,
    align_up,
    tensor_nbytes,
)
from ropeconv.gguf_io.types import VALUE_TYPES, GGUFValueType  # noqa: F401  (VALUE_TYPES: importers take it here)
from ropeconv.hashing import HashedWriter

WRITE_VERSION = 3
MAX_NAME_BYTES = 63  # GGML_MAX_NAME is 64 including the terminating NUL; llama.cpp refuses longer
COPY_CHUNK_BYTES = 16 * 1024 * 1024

TensorSource = GgufTensor | ByteRange | bytes | bytearray | memoryview | np.ndarray


def le_contiguous(array: np.ndarray) -> np.ndarray:
    """The array as GGUF stores it: C order, little-endian."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def effective_alignment(fields: list[KvEntry]) -> int:
    for f in fields:
        if f.key == ALIGNMENT_KEY:
            # llama.cpp reads this key as u32 and aborts on any other type
            if f.value_type != GGUFValueType.UINT32 or isinstance(f.value, bool) or not isinstance(f.value, int):
                raise InputError(f"{ALIGNMENT_KEY} must be a UINT32, got {f.value_type.name} {f.value!r}")
            return f.value
    return DEFAULT_ALIGNMENT


def build_header(fields: list[KvEntry], tensors: list[TensorInfo], alignment: int) -> tuple[bytes, list[int]]:
    """Header bytes (padded to the alignment) and each tensor's offset relative to the data section."""
    _check_plan(fields, tensors, alignment)
    out = bytearray(GGUF_MAGIC + struct.pack("<IQQ", WRITE_VERSION, len(tensors), len(fields)))
    for f in fields:
        out += f.raw if isinstance(f, GgufField) else f.pack()
    offsets = []
    offset = 0
    for t in tensors:
        offsets.append(offset)
        out += pack_string(t.name, strict=True)
        out += struct.pack(f"<I{len(t.shape)}QIQ", len(t.shape), *t.shape, t.ggml_type, offset)
        offset += align_up(t.nbytes, alignment)
    out += bytes(align_up(len(out), alignment) - len(out))
    return bytes(out), offsets


def _check_plan(fields: list[KvEntry], tensors: list[TensorInfo], alignment: int) -> None:
    if alignment <= 0 or alignment & (alignment - 1):
        raise InputError(f"GGUF alignment {alignment} is not a power of two")
    declared = effective_alignment(fields)
    if declared != alignment:
        # readers take the alignment from the metadata alone: a mismatch would misplace every tensor
        raise RopeconvError(f"internal: writing with alignment {alignment} but the metadata declares {declared}")
    keys = [f.key for f in fields]
    if len(set(keys)) != len(keys):
        raise RopeconvError(f"internal: duplicate GGUF keys {sorted({k for k in keys if keys.count(k) > 1})}")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise RopeconvError(f"internal: duplicate tensor names {sorted({n for n in names if names.count(n) > 1})}")
    for t in tensors:
        if len(t.name.encode("utf-8")) > MAX_NAME_BYTES:
            raise InputError(f"tensor name {t.name!r} is longer than llama.cpp's {MAX_NAME_BYTES} bytes")
        if not 0 <= len(t.shape) <= MAX_DIMS:
            raise InputError(f"tensor {t.name!r} has {len(t.shape)} dimensions (at most {MAX_DIMS})")
        if not all(isinstance(d, (int, np.integer)) and 0 <= d < 2**63 for d in t.shape):
            raise RopeconvError(f"internal: tensor {t.name!r} has shape {t.shape!r}")
        try:
            expected = tensor_nbytes(t.shape, t.ggml_type)
        except ValueError as exc:
            raise RopeconvError(f"internal: tensor {t.name!r}: {exc}") from None
        if expected != t.nbytes:
            raise RopeconvError(f"internal: tensor {t.name!r} says {t.nbytes} bytes, type and shape need {expected}")


@dataclass(frozen=True)
class Staged:
    """A piece of a streamed tensor that is the first nbytes of the buffer GgufWriter.stage() gave."""

    nbytes: int


class GgufWriter:
    """write_tensor() must be called once per tensor, in TensorInfo order; then close()."""

    def __init__(self, path: Path, fields: list[KvEntry], tensors: list[TensorInfo],
                 alignment: int = DEFAULT_ALIGNMENT, hash_data: bool = False) -> None:
        self.path = Path(path)
        self.alignment = alignment
        self.tensors = list(tensors)
        self.header, self.offsets = build_header(list(fields), self.tensors, alignment)
        self._pos = 0
        self._fd: int | None = None
        self._src_fds: dict[Path, int] = {}
        # sha256 of the file as written, computed on a second core while the first converts and writes,
        # so a manifest need not read the file back
        self._hash_data = hash_data
        self._out: HashedWriter | None = None
        self.sha256: str | None = None

    def __enter__(self) -> GgufWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Stop without finishing; the partial file is left for the caller's staging to remove."""
        self._release()

    def _open(self) -> int:
        """The output's descriptor, opened (and the header written) on first use."""
        if self._fd is None:
            # No O_TRUNC: the staged path already exists (mkstemp), and truncating an existing file to 0
            # arms ext4's auto_da_alloc, which makes close() write the whole file back (~1.8 s for 2 GB).
            # A longer stale file is cut to size in close() instead.
            self._fd = os.open(self.path, (os.O_RDWR if self._hash_data else os.O_WRONLY) | os.O_CREAT, 0o644)
            self._out = HashedWriter(self._fd) if self._hash_data else None
            self._emit(self.header)
        return self._fd

    def _emit(self, data) -> None:
        if self._out:  # owned: every buffer emitted here is made for this write and never changed after
            self._out.write(data, owned=True)
        else:
            assert self._fd is not None  # _open() came first
            write_all(self._fd, data)

    def write_tensor(self, name: str, source: TensorSource) -> None:
        """Append a tensor: byte-copied from a file range (a GgufTensor or ByteRange) or from memory."""
        info = self._check_next(name)
        self._open()
        if isinstance(source, (GgufTensor, ByteRange)):
            if source.nbytes != info.nbytes:
                raise RopeconvError(
                    f"internal: tensor {name!r} source has {source.nbytes} bytes, header says {info.nbytes}"
                )
            if isinstance(source, GgufTensor):  # a float tensor of a GGUF base: checked as a converted one is
                check_file_range(self._src_fd(source.file), source.offset, source.nbytes, source.ggml_type.name,
                                 source.torch_shape, f"{source.file}: tensor {name!r}")
            self._copy(source, name)
        else:
            data = (le_contiguous(source).data if isinstance(source, np.ndarray) else memoryview(source)).cast("B")
            if data.nbytes != info.nbytes:
                raise RopeconvError(f"internal: tensor {name!r} has {data.nbytes} bytes, header says {info.nbytes}")
            self._emit(data)
        self._finish_tensor(info)

    def stage(self, nbytes: int) -> memoryview:
        """A buffer to make the next piece of the tensor write_tensor_chunks is streaming in: fill it, then yield
        Staged(nbytes). It is the hashing writer's (hashing.HashedWriter.stage), so it needs hash_data=True."""
        self._open()
        if not self._out:
            raise RopeconvError("internal: staged pieces are appended by the hashing writer (hash_data=True)")
        return self._out.stage(nbytes)

    def write_tensor_chunks(self, name: str, chunks) -> None:
        """Append a tensor given as consecutive little-endian pieces: numpy arrays, buffers, or Staged pieces
        made in stage()'s buffer (appended before the next piece is asked for)."""
        info = self._check_next(name)
        self._open()
        written = 0
        for chunk in chunks:
            data = None if isinstance(chunk, Staged) else memoryview(chunk).cast("B")
            written += chunk.nbytes if data is None else data.nbytes
            if written > info.nbytes:
                break
            if data is None:  # a Staged piece
                assert self._out is not None  # stage() gave its buffer: the hashing writer's
                self._out.append_staged(chunk.nbytes)
            else:
                self._emit(data)
        if written != info.nbytes:
            raise RopeconvError(f"internal: tensor {name!r} streamed {written} bytes, header says {info.nbytes}")
        self._finish_tensor(info)

    def _check_next(self, name: str) -> TensorInfo:
        if self._pos >= len(self.tensors) or self.tensors[self._pos].name != name:
            expected = self.tensors[self._pos].name if self._pos < len(self.tensors) else None
            raise RopeconvError(f"internal: tensor {name!r} written out of order (expected {expected!r})")
        return self.tensors[self._pos]

    def _finish_tensor(self, info: TensorInfo) -> None:
        self._emit(bytes(align_up(info.nbytes, self.alignment) - info.nbytes))
        self._pos += 1

    def _src_fd(self, file: Path) -> int:
        src = self._src_fds.get(file)
        if src is None:
            src = self._src_fds[file] = os.open(file, os.O_RDONLY)
        return src

    def _copy(self, source: GgufTensor | ByteRange, name: str) -> None:
        src = self._src_fd(source.file)
        offset, remaining = source.offset, source.nbytes
        if self._out:  # a kernel copy all the same, hashed right behind it
            try:
                self._out.copy(src, offset, remaining)
            except EOFError:
                raise InputError(f"{source.file}: ended inside tensor {name!r} (was the file changed while copying?)") \
                    from None
            return
        dst = self._open()  # open already (write_tensor opened it)
        while remaining:
            n = copy_range(src, dst, min(remaining, COPY_CHUNK_BYTES), offset)
            if n <= 0:
                raise InputError(f"{source.file}: ended inside tensor {name!r} (was the file changed while copying?)")
            offset += n
            remaining -= n

    def close(self) -> None:
        if self._pos != len(self.tensors):
            missing = len(self.tensors) - self._pos
            self._release()
            raise RopeconvError(f"internal: {missing} tensors were never written to {self.path}")
        fd = self._open()  # a file with no tensors is still written
        if self._out:  # first: the hashing thread may still be appending the last pieces
            self.sha256 = self._out.hexdigest()
        end = len(self.header) + sum(align_up(t.nbytes, self.alignment) for t in self.tensors)
        if os.fstat(fd).st_size != end:
            os.ftruncate(fd, end)
        self._release()

    def _release(self) -> None:
        if self._out:
            self._out.close()
            self._out = None
        for fd in self._src_fds.values():
            os.close(fd)
        self._src_fds.clear()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def rewrite_gguf(src: GgufFile, dst: Path, *, set_fields: dict | None = None,
                 drop_keys: AbstractSet[str] = frozenset(), add_tensors: dict[str, np.ndarray] | None = None,
                 drop_tensors: AbstractSet[str] = frozenset(), transform_tensors: dict | None = None) -> None:
    """Copy `src` to `dst` with metadata changed and tensors added; everything else byte for byte.

    set_fields maps a key to (value_type, value) or (value_type, value, item_type): an existing key
    is replaced where it stands, a new one is appended. drop_keys that are absent are ignored.
    add_tensors are appended after the existing tensors; a name that already exists is replaced in
    place (e.g. a Llama-3 GGUF's rope_freqs.weight). drop_tensors are left out (absent ones ignored).
    transform_tensors maps an existing tensor's name to a function of its GgufTensor returning new data of the
    same type and size, called when that tensor is written (one in memory at a time).
    """
    transform_tensors = dict(transform_tensors or {})
    set_fields = dict(set_fields or {})
    add_tensors = dict(add_tensors or {})
    for name, array in add_tensors.items():
        if not isinstance(array, np.ndarray):
            raise RopeconvError(f"internal: tensor {name!r} to add is a {type(array).__name__}, not a numpy array")
        add_tensors[name] = le_contiguous(array)
    dst = Path(dst)
    if dst.exists() and os.path.samefile(dst, src.path):
        raise InputError(f"{dst}: refusing to rewrite a GGUF onto itself")
    both = set_fields.keys() & set(drop_keys)
    if both:
        raise RopeconvError(f"internal: keys both set and dropped: {sorted(both)}")

    new = {key: NewField(key, *spec) for key, spec in set_fields.items()}
    fields: list[KvEntry] = [new.pop(f.key, f) for f in src.fields if f.key not in drop_keys]
    fields += new.values()

    infos: list[TensorInfo] = []
    sources: list[TensorSource | Callable[..., TensorSource]] = []  # a callable: a transformed tensor, made late
    if set(drop_tensors) & add_tensors.keys():
        raise RopeconvError(f"internal: tensors both added and dropped: {sorted(set(drop_tensors) & add_tensors.keys())}")
    for t in src.tensors:
        if t.name in drop_tensors:
            continue
        added = add_tensors.pop(t.name, None)
        infos.append(TensorInfo.of(t) if added is None else TensorInfo.of_array(t.name, added))
        transform = transform_tensors.get(t.name)
        sources.append(added if added is not None else (lambda t=t, f=transform: f(t)) if transform else t)
    for name, array in add_tensors.items():
        infos.append(TensorInfo.of_array(name, array))
        sources.append(array)

    with GgufWriter(dst, fields, infos, effective_alignment(fields)) as writer:
        for info, source in zip(infos, sources):
            writer.write_tensor(info.name, source() if callable(source) else source)
