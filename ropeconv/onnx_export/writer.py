"""Stream an ONNX model to disk one initializer at a time: memory is bounded by the largest tensor.

protobuf merges repeated occurrences of a message field, so a ModelProto may be written as its
graph-less part followed by one `graph { initializer { … } }` chunk per tensor: onnx, onnxruntime and
every protobuf parser read it as one graph. Each chunk's raw_data is streamed after a hand-written
length prefix. Below protobuf's 2 GB limit the weights go inside model.onnx; above it they go to
model.onnx.data (4 KiB-aligned, so onnxruntime can memory-map them) and model.onnx holds references.
Each file's sha256 is computed as its bytes are written (ropeconv.hashing), for the manifest.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from onnx import ModelProto, StringStringEntryProto, TensorProto

from ropeconv.hashing import HashedWriter
from ropeconv.inputfile import utf8_path

DATA_ALIGN = 4096

_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer
_TENSOR_RAW_DATA = 9  # TensorProto.raw_data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int) -> bytes:
    return _varint(field << 3 | 2)  # wire type 2: length-delimited


def _chunk(field: int, payload_len: int) -> bytes:
    return _key(field) + _varint(payload_len)


class OnnxFileWriter:
    def __init__(self, path: Path, header: ModelProto, *, external: bool) -> None:
        self.path = Path(path)
        self.external = external
        self.data_path = self.path.with_name(self.path.name + ".data")
        self._refs: list[TensorProto] = []  # every initializer as an external reference (for the checker)
        # None once closed (and _data_fd without external data): _hashed then holds no writer for it
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._data_fd = os.open(self.data_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666) if external else None
        self._hashed: dict[int | None, HashedWriter] = {
            fd: HashedWriter(fd) for fd in (self._fd, self._data_fd) if fd is not None}
        self.sha256: dict[str, str] = {}  # file name → digest of the bytes written, once closed
        self._data_offset = 0
        self._offset = 0
        self._write(self._fd, header.SerializeToString())

    def _write(self, fd: int | None, data) -> None:
        view = memoryview(data).cast("B")
        self._hashed[fd].write(view)
        if fd == self._fd:
            self._offset += view.nbytes
        else:
            self._data_offset += view.nbytes

    def add(self, name: str, data_type: int, shape: tuple[int, ...], nbytes: int, chunks: Iterable[np.ndarray]) -> None:
        """One initializer whose bytes arrive in pieces (rows of it), nbytes in all."""
        head = TensorProto(name=name, data_type=data_type, dims=list(shape))
        if self.external:
            pad = -self._data_offset % DATA_ALIGN
            if pad:
                self._write(self._data_fd, b"\0" * pad)
            offset = self._data_offset
            self._write_chunks(self._data_fd, chunks, nbytes, name)
            ref = self._ref(head, self.data_path.name, offset, nbytes)
            tensor = ref.SerializeToString()
            self._write(self._fd, self._wrapped(len(tensor)) + tensor)
            return
        raw_prefix = _chunk(_TENSOR_RAW_DATA, nbytes)
        head_bytes = head.SerializeToString()
        tensor_len = len(head_bytes) + len(raw_prefix) + nbytes
        self._write(self._fd, self._wrapped(tensor_len) + head_bytes + raw_prefix)
        self._ref(head, self.path.name, self._offset, nbytes)
        self._write_chunks(self._fd, chunks, nbytes, name)

    def _write_chunks(self, fd: int | None, chunks: Iterable[np.ndarray], nbytes: int, name: str) -> None:
        written = 0
        for piece in chunks:
            piece = np.ascontiguousarray(piece)
            self._write(fd, piece)
            written += piece.nbytes
        if written != nbytes:  # the length prefix is already on disk
            raise AssertionError(f"{name}: {written} bytes written, {nbytes} announced")

    @staticmethod
    def _wrapped(tensor_len: int) -> bytes:
        initializer = _chunk(_GRAPH_INITIALIZER, tensor_len)
        return _chunk(_MODEL_GRAPH, len(initializer) + tensor_len) + initializer

    def _ref(self, head: TensorProto, location: str, offset: int, length: int) -> TensorProto:
        ref = TensorProto()
        ref.CopyFrom(head)
        ref.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
            ref.external_data.append(StringStringEntryProto(key=key, value=value))
        self._refs.append(ref)
        return ref

    def close(self) -> list[Path]:
        for fd, path in ((self._fd, self.path), (self._data_fd, self.data_path)):
            if fd is not None:
                self.sha256[path.name] = self._hashed[fd].hexdigest()
                os.fsync(fd)
                os.close(fd)
        self._release_hashers()
        self._fd = self._data_fd = None
        return [self.path] + ([self.data_path] if self.external else [])

    def _release_hashers(self) -> None:
        for hashed in self._hashed.values():
            hashed.close()
        self._hashed = {}

    def abort(self) -> None:
        self._release_hashers()
        for fd in (self._fd, self._data_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._data_fd = None
        self.path.unlink(missing_ok=True)
        self.data_path.unlink(missing_ok=True)

    def check(self, header: ModelProto) -> None:
        """onnx.checker over the graph with every initializer as a reference into the written files:
        node schemas, types and shapes are checked without loading the weights."""
        import onnx

        model = ModelProto()
        model.CopyFrom(header)
        model.graph.initializer.extend(self._refs)
        probe = self.path.with_name(f".{self.path.name}.check.onnx")
        try:
            onnx.save_model(model, probe)
            with utf8_path(probe) as readable:  # the checker takes the path as UTF-8 text
                onnx.checker.check_model(str(readable), full_check=True)
        finally:
            probe.unlink(missing_ok=True)
