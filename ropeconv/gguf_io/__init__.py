"""GGUF container: read a file as an index (no tensor bytes), write one by streaming."""

from ropeconv.gguf_io.reader import GgufField, GgufFile, GgufTensor, read_gguf
from ropeconv.gguf_io.writer import ByteRange, GgufWriter, NewField, TensorInfo, rewrite_gguf

__all__ = [
    "ByteRange", "GgufField", "GgufFile", "GgufTensor", "GgufWriter", "NewField", "TensorInfo",
    "read_gguf", "rewrite_gguf",
]  # fmt: skip
