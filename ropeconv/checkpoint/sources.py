"""Where tensor bytes come from: memory-mapped safetensors (streamed) or a pickle (opt-in, in memory)."""

from __future__ import annotations

import functools
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ropeconv.checkpoint.safetensors_header import DTYPE_BYTES, TensorEntry

if TYPE_CHECKING:
    import torch

COPY_CHUNK_BYTES = 16 * 1024 * 1024


@functools.cache
def torch_dtypes() -> dict[str, torch.dtype]:
    # torch is imported only when a tensor is touched: a byte-copy extend never needs it (~1.5 s)
    import torch

    return {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
        "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    }  # fmt: skip


class ByteSink(Protocol):
    """Where a source appends a tensor's bytes (ropeconv.hashing.HashedWriter: it hashes them as they land)."""

    def copy(self, src_fd: int, offset: int, nbytes: int) -> None: ...

    def write(self, data: bytes) -> None: ...


class TensorSource(Protocol):
    def raw(self, entry: TensorEntry) -> bool: ...

    def copy_into(self, entry: TensorEntry, out: ByteSink) -> None: ...

    def load(self, entry: TensorEntry) -> torch.Tensor: ...

    def close(self) -> None: ...


class SafetensorsSource:
    """Byte-copies a tensor's range straight from the file (kernel copy where the OS has one)."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def _fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def raw(self, entry: TensorEntry) -> bool:
        """The entry's byte range in its file is the tensor: writers may copy it without this source."""
        return True

    def copy_into(self, entry: TensorEntry, out: ByteSink) -> None:
        """Append the tensor's bytes to out, copied by the kernel from this source's open file (EOFError when the
        file ends first)."""
        out.copy(self._fd(entry.file), entry.offset, entry.nbytes)

    def read_into(self, entry: TensorEntry, start: int, buf: memoryview) -> None:
        """Fill buf with the tensor's bytes from `start` (relative to the tensor's data)."""
        if start < 0 or start + buf.nbytes > entry.nbytes:
            raise ValueError(f"read of {buf.nbytes} bytes at {start} outside tensor {entry.name!r}")
        fd, done = self._fd(entry.file), 0
        while done < buf.nbytes:
            n = os.preadv(fd, [buf[done:]], entry.offset + start + done)
            if n <= 0:
                raise OSError(f"{entry.file}: unexpected end of data in tensor {entry.name!r}")
            done += n

    @contextmanager
    def mapped(self, entry: TensorEntry, start: int, nbytes: int) -> Iterator[memoryview]:
        """The tensor's bytes [start, start + nbytes) as a read-only view of the file's pages (no copy), unmapped
        on exit. The file must not shrink meanwhile (its pages would fault)."""
        if start < 0 or start + nbytes > entry.nbytes or nbytes <= 0:
            raise ValueError(f"map of {nbytes} bytes at {start} outside tensor {entry.name!r}")
        fd = self._fd(entry.file)
        at = entry.offset + start
        if at + nbytes > os.fstat(fd).st_size:
            raise OSError(f"{entry.file}: unexpected end of data in tensor {entry.name!r}")
        lead = at % mmap.ALLOCATIONGRANULARITY
        mapping = mmap.mmap(fd, lead + nbytes, mmap.MAP_SHARED, mmap.PROT_READ, offset=at - lead)
        view = memoryview(mapping)[lead:]
        try:
            yield view
        finally:
            try:
                view.release()
                mapping.close()
            except BufferError:  # an array over it is still referenced (by a traceback's frame): unmapped with it
                pass

    def load(self, entry: TensorEntry) -> torch.Tensor:
        import torch

        dtype = torch_dtypes()[entry.dtype]
        if entry.nbytes == 0:
            return torch.empty(entry.shape, dtype=dtype)
        data = bytearray(entry.nbytes)  # read straight into it: pread's bytes + a copy would double the peak
        self.read_into(entry, 0, memoryview(data))
        return torch.frombuffer(data, dtype=dtype).reshape(entry.shape)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def copy_range(src: int, dst: int, count: int, offset: int) -> int:
    """Kernel copy where the OS has one (copy_file_range within a filesystem, sendfile across them, as from a
    memfd), else pread + write; returns 0 only at the source's end."""
    for kernel_copy in (lambda: os.copy_file_range(src, dst, count, offset),
                        lambda: os.sendfile(dst, src, offset, count)):
        try:
            n = kernel_copy()
            if n > 0:
                return n
        except (AttributeError, OSError):
            pass
    # copy_file_range also returns 0 on filesystems it cannot handle: pread tells that from the end
    data = os.pread(src, count, offset)
    write_all(dst, data)
    return len(data)


class PickleSource:
    """A torch pickle loaded with weights_only=True; pickles cannot be streamed, so it lives in memory."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = tensors

    def raw(self, entry: TensorEntry) -> bool:
        return False

    def copy_into(self, entry: TensorEntry, out: ByteSink) -> None:
        out.write(tensor_bytes(self._tensors[entry.name]))

    def load(self, entry: TensorEntry) -> torch.Tensor:
        return self._tensors[entry.name]

    def close(self) -> None:
        self._tensors.clear()


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    import torch

    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def entry_for(name: str, tensor: torch.Tensor, file: Path) -> TensorEntry:
    dtype = {v: k for k, v in torch_dtypes().items()}.get(tensor.dtype)
    if dtype is None:
        raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot store")
    return TensorEntry(name, dtype, tuple(tensor.shape), file, -1, tensor.numel() * DTYPE_BYTES[dtype])
