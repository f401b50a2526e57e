"""A TensorSource whose tensors are the base's with the LoRA merge applied, for every exporter alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ropeconv.checkpoint.safetensors_header import TensorEntry
from ropeconv.checkpoint.sources import ByteSink, tensor_bytes
from ropeconv.lora.merge import LoraMerge

if TYPE_CHECKING:
    import torch


class MergedSource:
    """Wraps the base's source. Untouched tensors pass straight through (kernel copies stay kernel copies);
    a touched one is merged once and kept until the next touched one is asked for, so a writer reading it
    in chunks does not merge it twice; its bytes are made only for the writers that copy bytes. Memory: one
    merged tensor (and its bytes) plus its factors."""

    def __init__(self, inner, merge: LoraMerge) -> None:
        self._inner = inner
        self._merge = merge
        self._cached: tuple[str, torch.Tensor] | None = None
        self._cached_bytes: bytes | None = None

    def raw(self, entry: TensorEntry) -> bool:
        """Whether the entry's bytes in its file are the tensor (a raw byte range may be copied)."""
        return not self._merge.touches(entry.name) and getattr(self._inner, "raw", lambda e: True)(entry)

    def _merged(self, entry: TensorEntry) -> torch.Tensor:
        if self._cached is None or self._cached[0] != entry.name:
            self._cached, self._cached_bytes = None, None  # drop the previous one before making the next
            self._cached = (entry.name, self._merge.apply(entry.name, self._inner.load(entry)))
        return self._cached[1]

    def _merged_bytes(self, entry: TensorEntry) -> bytes:
        tensor = self._merged(entry)
        if self._cached_bytes is None:
            self._cached_bytes = tensor_bytes(tensor)
        return self._cached_bytes

    def load(self, entry: TensorEntry) -> torch.Tensor:
        if not self._merge.touches(entry.name):
            return self._inner.load(entry)
        return self._merged(entry)

    def copy_into(self, entry: TensorEntry, out: ByteSink) -> None:
        if not self._merge.touches(entry.name):
            return self._inner.copy_into(entry, out)
        out.write(self._merged_bytes(entry))

    def read_into(self, entry: TensorEntry, start: int, buf: memoryview) -> None:
        if not self._merge.touches(entry.name):
            return self._inner.read_into(entry, start, buf)
        buf[:] = self._merged_bytes(entry)[start : start + buf.nbytes]

    def close(self) -> None:
        self._cached, self._cached_bytes = None, None
        self._inner.close()
