"""GGUF container: read a file as an index (no tensor bytes), write one by streaming."""

from ropeconv.gguf_io.reader import GgufField, GgufFile, GgufTensor, read_gguf

__all__ = [
    "ByteRange", "GgufField", "GgufFile", "GgufTensor", "GgufWriter", "NewField", "TensorInfo",
    "read_gguf", "rewrite_gguf",
]  # fmt: skip
WRITER_NAMES = {"ByteRange", "GgufWriter", "NewField", "TensorInfo", "rewrite_gguf"}


def __getattr__(name: str):
    # the writer needs numpy and gguf-py; a reader of headers (inspect, a dry run) imports neither
    if name in WRITER_NAMES:
        from ropeconv.gguf_io import writer

        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
