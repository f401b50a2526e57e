"""Streamed, sharded safetensors output.

The header of every shard is computed before any data is written (shapes and dtypes are known from
the plan), so tensors are appended one at a time: untouched ones by a kernel byte copy from the source
file, changed ones from memory. Each shard's sha256 is computed as it is written (ropeconv.hashing), so the
manifest need not read the shards back. Peak memory is one tensor.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ropeconv import jsontext
from ropeconv.checkpoint.safetensors_header import TensorEntry
from ropeconv.checkpoint.sources import TensorSource, tensor_bytes
from ropeconv.errors import InputError, RopeconvError
from ropeconv.hashing import HashedWriter
from ropeconv.sizes import DEFAULT_MAX_SHARD_BYTES

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class Shard:
    file: str
    tensors: tuple[TensorEntry, ...]
    header: bytes

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def plan_shards(specs: list[TensorEntry], max_shard_bytes: int) -> list[Shard]:
    groups: list[list[TensorEntry]] = [[]]
    size = 0
    for spec in specs:
        if groups[-1] and size + spec.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += spec.nbytes
    n = len(groups)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    return [Shard(name, tuple(g), _header(g)) for name, g in zip(names, groups)]


def _header(tensors: list[TensorEntry]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data area 8-byte aligned, as safetensors pads it
    return len(raw).to_bytes(8, "little") + raw


class SafetensorsWriter:
    """write() must be called once per spec, in spec order; then close() (or abort())."""

    def __init__(self, out_dir: Path, specs: list[TensorEntry], max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.out_dir = Path(out_dir)
        self.shards = plan_shards(specs, max_shard_bytes)
        self._queue = [(i, t) for i, s in enumerate(self.shards) for t in s.tensors]
        self._pos = 0
        self._fd: int | None = None
        self._out: HashedWriter | None = None
        self._shard = -1
        self.sha256: dict[str, str] = {}  # file name → digest of the bytes written, filled as each file is finished

    def write(self, spec: TensorEntry, source: TensorSource, tensor: torch.Tensor | None = None) -> None:
        """Append a tensor: byte-copied from `source` when `tensor` is None, else from memory."""
        shard_index, expected = self._queue[self._pos]
        if expected.name != spec.name:
            raise RopeconvError(f"internal: tensor {spec.name!r} written out of order (expected {expected.name!r})")
        self._pos += 1
        if shard_index != self._shard:
            self._open(shard_index)
        out = self._out
        assert out is not None  # _open made this shard's writer
        if tensor is None and source.raw(spec):  # the entry's byte range in its file is the tensor
            try:
                source.copy_into(spec, out)
            except EOFError:
                raise InputError(f"{spec.file}: ended inside tensor {spec.name!r} (was it changed while copying?)") \
                    from None
            return
        data = tensor_bytes(source.load(spec) if tensor is None else tensor)
        if len(data) != expected.nbytes:
            raise RopeconvError(f"internal: tensor {spec.name!r} has {len(data)} bytes, header says {expected.nbytes}")
        out.write(data)

    def _open(self, index: int) -> None:
        self._close_fd()
        self._shard = index
        # read and write: the hash of each copied range is read back right behind the copy (ropeconv.hashing)
        self._fd = os.open(self.out_dir / self.shards[index].file, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._out = HashedWriter(self._fd)
        self._out.write(self.shards[index].header)

    def _close_fd(self, finished: bool = True) -> None:
        if self._out is not None:
            if finished:
                self.sha256[self.shards[self._shard].file] = self._out.hexdigest()
            self._out.close()
            self._out = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abort(self) -> None:
        """Stop without finishing; the partial files are left for the caller's staging to remove."""
        self._close_fd(finished=False)

    def close(self) -> list[str]:
        """Finish; returns the files written (shards and, when sharded, the index)."""
        if self._pos != len(self._queue):
            raise RopeconvError(f"internal: {len(self._queue) - self._pos} tensors were never written")
        self._close_fd()
        for shard in self.shards:
            if not (self.out_dir / shard.file).exists():  # a shard holding only empty tensors
                with open(self.out_dir / shard.file, "wb") as fh:
                    fh.write(shard.header)
                self.sha256[shard.file] = hashlib.sha256(shard.header).hexdigest()
        files = [s.file for s in self.shards]
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": sum(s.data_bytes for s in self.shards)},
                "weight_map": {t.name: s.file for s in self.shards for t in s.tensors},
            }
            text = (jsontext.dumps(index, INDEX_NAME, indent=2, sort_keys=True) + "\n").encode()
            (self.out_dir / INDEX_NAME).write_bytes(text)
            self.sha256[INDEX_NAME] = hashlib.sha256(text).hexdigest()
            files.append(INDEX_NAME)
        return files
