"""Float conversions on a GGUF conversion's hot path, with numpy on bytes read straight from a safetensors file.

torch costs ~1.5 s to import and casts bfloat16 → float16 at ~15 ns an element on these CPUs; numpy is imported
anyway (the GGUF writer) and these are a few vectorized integer passes over blocks that stay in the CPU's L2.
Every result is the same bytes as torch's `.to()` (tests hold them equal, bf16 → f16 on all 65536 bit patterns):

- bf16 → f16 is exact wherever the value is a float16 normal (bf16 has 7 mantissa bits, f16 has 10): the
  exponent is rebiased (127 → 15) and the mantissa shifted, as integers. The rest — zeros, values that become
  float16 subnormals (rounded), values beyond ±65504, inf and nan — are few, and go through float32 and numpy's
  round-to-nearest-even cast, as torch's conversion (through float) rounds them; a nan stays quiet, as torch's.
- f32 → f16 is numpy's cast (round to nearest even, as torch's); bf16/f16 → f32 are exact.
A float16 result that holds an inf its source did not is refused (check_half's rule and message).
"""

from __future__ import annotations

import numpy as np

from ropeconv.errors import UnsupportedError

# safetensors dtype → numpy dtype of its bytes (bf16 has no numpy dtype: its bits as uint16)
BITS = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
# a bf16's magnitude bits whose value is a float16 normal: biased exponent 113..142 (float16's 1..30)
F16_NORMAL_LOW = 113 << 7
F16_NORMAL_SPAN = (143 << 7) - F16_NORMAL_LOW
REBIAS = (127 - 15) << 7
BLOCK_ELEMENTS = 1 << 16  # per pass: in, out and two temporaries stay in L2
HALF_INSTEAD = "--outtype bf16 or f32"


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """The values of little-endian bytes of a safetensors dtype (F32, F16 or BF16), as float32 (exact)."""
    x = raw.view(BITS[dtype])
    if dtype == "F32":
        return x
    if dtype == "F16":
        return x.astype(np.float32)
    return (x.astype(np.uint32) << 16).view(np.float32)


def to_float16(raw: np.ndarray, dtype: str, name: str, instead: str = HALF_INSTEAD) -> np.ndarray:
    """float16 of little-endian bytes of a safetensors dtype (a new array unless already F16); refused when that
    makes an inf the source lacked."""
    if dtype == "F16":
        return raw.view(np.float16)
    if dtype == "BF16":
        return bf16_to_f16(raw.view("<u2"), name, instead)
    return float32_to_float16(raw.view("<f4"), name, instead)


def float32_to_float16(x: np.ndarray, name: str, instead: str = HALF_INSTEAD) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        y = x.astype(np.float16)
    # one cheap integer pass in the common case: any inf or nan at all?
    if int((y.view(np.uint16) & 0x7FFF).max(initial=0)) >= 0x7C00 and bool(np.isinf(y).any()) \
            and not bool(np.isinf(x).any()):
        raise UnsupportedError(f"tensor {name!r} has values beyond float16's range (±65504); use {instead}")
    return y


def bf16_to_f16(b: np.ndarray, name: str, instead: str = HALF_INSTEAD) -> np.ndarray:
    """uint16 bfloat16 bits (1-D) → a new float16 array."""
    out = np.empty(b.shape, np.uint16)
    t = np.empty(min(b.size, BLOCK_ELEMENTS), np.uint16)
    other = np.empty(t.shape, np.bool_)
    for start in range(0, b.size, BLOCK_ELEMENTS):
        src, dst = b[start : start + BLOCK_ELEMENTS], out[start : start + BLOCK_ELEMENTS]
        n = src.size
        np.bitwise_and(src, 0x7FFF, out=t[:n])
        t[:n] -= np.uint16(F16_NORMAL_LOW)  # wraps below: one unsigned compare finds every non-normal
        np.greater_equal(t[:n], F16_NORMAL_SPAN, out=other[:n])
        np.add(t[:n], np.uint16(F16_NORMAL_LOW - REBIAS), out=dst)
        dst <<= 3
        np.bitwise_and(src, 0x8000, out=t[:n])
        dst |= t[:n]
        if other[:n].any():
            where = np.flatnonzero(other[:n])
            values = (src[where].astype(np.uint32) << 16).view(np.float32)
            bits = float32_to_float16(values, name, instead).view(np.uint16)
            dst[where] = bits | np.where(np.isnan(values), np.uint16(0x0200), np.uint16(0))  # quiet, as torch
    return out.view(np.float16)
