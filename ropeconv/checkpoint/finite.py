"""Non-finite weights (NaN, ±infinity) found while tensors stream, and refused by tensor name.

A NaN in an embedding row the parity probe never reads passes every logit comparison and is published; so every
float tensor written is checked once, on its bytes, whichever path a writer then takes (kernel byte copy, numpy
cast, torch): one check for all of them. An IEEE float is non-finite exactly when all its exponent bits are set,
i.e. when its bits with the sign cleared are at least the exponent mask (float8 e4m3fn has no infinity: only
S.1111.111 is NaN). That test is two vectorized passes over a cache-sized piece (a bitwise AND into a scratch
buffer, a max), with no float decoding, and works alike for bfloat16, which numpy has no type for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ropeconv.checkpoint.safetensors_header import DTYPE_BYTES, TensorEntry
from ropeconv.errors import InputError

if TYPE_CHECKING:
    import numpy as np

# safetensors dtype → (unsigned view, mask clearing the sign, smallest non-finite value under that mask)
NON_FINITE_BITS = {
    "F64": ("<u8", 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000),
    "F32": ("<u4", 0x7FFF_FFFF, 0x7F80_0000),
    "F16": ("<u2", 0x7FFF, 0x7C00),
    "BF16": ("<u2", 0x7FFF, 0x7F80),
    "F8_E5M2": ("u1", 0x7F, 0x7C),
    "F8_E4M3": ("u1", 0x7F, 0x7F),
}
CHUNK_BYTES = 1 << 20  # a piece stays in the CPU's caches between the AND and the max
READ_BYTES = 4 << 20  # per read of a tensor's bytes from its file


def checked(dtype: str) -> bool:
    """Whether tensors of this safetensors dtype can hold a non-finite value (floats)."""
    return dtype in NON_FINITE_BITS


def first_non_finite(data: np.ndarray, dtype: str) -> tuple[int, str] | None:
    """(element index, "NaN" / "+inf" / "-inf") of the first non-finite element of `data` (the little-endian
    bytes of elements of `dtype`, as uint8), or None when every element is finite."""
    import numpy as np

    view, mask, threshold = NON_FINITE_BITS[dtype]
    words = data.view(np.dtype(view))
    if not words.size:
        return None
    scratch = np.empty(min(words.size, CHUNK_BYTES // words.itemsize), words.dtype)
    for start in range(0, words.size, scratch.size):
        piece = words[start : start + scratch.size]
        bits = np.bitwise_and(piece, mask, out=scratch[: piece.size])
        if bits.max() >= threshold:
            at = int(np.flatnonzero(bits >= threshold)[0])
            kind = "NaN" if bits[at] > threshold or dtype == "F8_E4M3" else \
                ("-inf" if piece[at] != bits[at] else "+inf")
            return start + at, kind
    return None


def check_tensor(entry: TensorEntry, source, what: str = "") -> None:
    """InputError naming the tensor (and the element) when a float tensor, as `source` gives it, holds NaN or ±inf.
    A tensor the source hands over as its file's bytes is read in pieces; any other (merged, unpickled) is
    checked in memory, where the writers will read it from."""
    if not checked(entry.dtype) or entry.nbytes == 0:
        return
    for at, piece in _pieces(entry, source):
        refuse_non_finite(piece, entry.dtype, entry.shape, f"{entry.file}: tensor {entry.name!r}{what}", at)


def refuse_non_finite(data: np.ndarray, dtype: str, shape: tuple[int, ...], where: str, at: int = 0) -> None:
    """InputError("{where} holds NaN at element [i, j]; …") when `data` (bytes at byte `at` of a tensor of this
    dtype and shape) holds a non-finite element."""
    found = first_non_finite(data, dtype)
    if found is not None:
        index, kind = found
        raise InputError(f"{where} holds {kind} at {_element(shape, at // DTYPE_BYTES[dtype] + index)}; ropeconv "
                         "does not write non-finite weights (repair or drop that tensor in the base)")


def check_file_range(fd: int, offset: int, nbytes: int, dtype: str, shape: tuple[int, ...], where: str) -> None:
    """refuse_non_finite over `nbytes` bytes at `offset` of the open file `fd` (a float tensor copied byte for byte,
    e.g. from a GGUF base), read in pieces into one reused buffer; other dtypes pass unread."""
    import numpy as np

    if not checked(dtype) or nbytes == 0:
        return
    buf = np.empty(min(nbytes, READ_BYTES), np.uint8)
    for start in range(0, nbytes, buf.size):
        piece = buf[: min(buf.size, nbytes - start)]
        if os.preadv(fd, [piece.data], offset + start) != piece.size:  # .data: memoryview(piece)
            raise InputError(f"{where} ends before its {nbytes} bytes (was the file changed?)")
        refuse_non_finite(piece, dtype, shape, where, start)


def _pieces(entry: TensorEntry, source) -> Iterator[tuple[int, np.ndarray]]:
    """(byte offset, bytes) of the tensor as the writers will read it: its file's bytes read into one reused buffer
    in pieces (mapping the pages instead measured no faster: a page fault per 4 KiB), or a merged or unpickled
    tensor from memory."""
    import numpy as np

    if source.raw(entry) and hasattr(source, "read_into"):
        buf = np.empty(min(entry.nbytes, READ_BYTES), np.uint8)
        for start in range(0, entry.nbytes, buf.size):
            piece = buf[: min(buf.size, entry.nbytes - start)]
            source.read_into(entry, start, piece.data)  # .data: memoryview(piece)
            yield start, piece
    else:
        import torch

        tensor = source.load(entry)
        yield 0, tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()


def _element(shape: tuple[int, ...], flat: int) -> str:
    if not shape:
        return "its only element"
    index = []
    for dim in reversed(shape):
        flat, i = divmod(flat, dim)
        index.append(i)
    return "element [" + ", ".join(str(i) for i in reversed(index)) + "]"
