"""Float conversions on a GGUF conversion's hot path, with numpy on bytes read straight from a safetensors file.

torch costs ~1.5 s to import and casts bfloat16 → float16 at ~15 ns an element on these CPUs; numpy is imported
anyway (the GGUF writer) and these are a few vectorized integer passes over blocks that stay in the CPU's L2.
Every result is the same bytes as torch's `.to()` (tests hold them equal, bf16 → f16 on all 65536 bit patterns):

- bf16 → f16 is exact wherever the value is a float16 normal (bf16 has 7 mantissa bits, f16 has 10): the
  exponent is rebiased (127 → 15) and the mantissa shifted, as integers, two elements per uint32 word. The rest — zeros, values that become
  float16 subnormals (rounded), values beyond ±65504, inf and nan — are few, and go through float32 and numpy's
  round-to-nearest-even cast, as torch's conversion (through float) rounds them; a nan stays quiet, as torch's.
  The fast path takes those from a table of all 65536 patterns built once from that element-wise definition.
- f32 → f16 is numpy's cast (round to nearest even, as torch's); bf16/f16 → f32 are exact.
A float16 result that holds an inf its source did not is refused (check_half's rule and message).
"""

from __future__ import annotations

import numpy as np

from ropeconv.export.half import HALF_INSTEAD, refuse_half

# safetensors dtype → numpy dtype of its bytes (bf16 has no numpy dtype: its bits as uint16)
BITS: dict[str, np.dtype] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
# a bf16's magnitude bits whose value is a float16 normal: biased exponent 113..142 (float16's 1..30)
F16_NORMAL_LOW = 113 << 7
F16_NORMAL_SPAN = (143 << 7) - F16_NORMAL_LOW
REBIAS = (127 - 15) << 7
BLOCK_ELEMENTS = 1 << 16  # per pass: in, out and two temporaries stay in L2
PAIR = 0x10001  # a uint16 constant in both halves of a uint32 word
OVERFLOW_LOW = 0x4780  # bf16 magnitude bits of 65536: from here up to inf, a finite bf16 rounds to a float16 inf
FIX_UP: np.ndarray | None = None  # _fix_up_table()


def to_float32(raw: np.ndarray, dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """The values of little-endian bytes of a safetensors dtype (F32, F16 or BF16), as float32 (exact); into
    `out` (uint8, 4 bytes an element) when given, else a view of F32 bytes or a new array."""
    x = raw.view(BITS[dtype])
    if out is not None:
        if dtype == "BF16":
            np.left_shift(x, 16, out=out.view(np.uint32), dtype=np.uint32)
        else:
            np.copyto(out.view(np.float32), x)
        return out.view(np.float32)
    if dtype == "F32":
        return x
    if dtype == "F16":
        return x.astype(np.float32)
    return (x.astype(np.uint32) << 16).view(np.float32)


def to_float16(raw: np.ndarray, dtype: str, name: str, out: np.ndarray, instead: str = HALF_INSTEAD) -> np.ndarray:
    """float16 of little-endian bytes of a safetensors dtype, into `out` (uint8, 2 bytes an element); refused when
    that makes an inf the source lacked."""
    if dtype == "F16":
        np.copyto(out, raw)
        return out.view(np.float16)
    if dtype == "BF16":
        return bf16_to_f16(raw.view("<u2"), name, instead, out)
    return float32_to_float16(raw.view("<f4"), name, instead, out)


def float32_to_float16(x: np.ndarray, name: str, instead: str = HALF_INSTEAD,
                       out: np.ndarray | None = None) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        if out is None:
            y = x.astype(np.float16)
        else:
            y = out.view(np.float16)
            np.copyto(y, x, casting="same_kind")
    # one cheap integer pass in the common case: any inf or nan at all?
    if int((y.view(np.uint16) & 0x7FFF).max(initial=0)) >= 0x7C00 and bool(np.isinf(y).any()) \
            and not bool(np.isinf(x).any()):
        refuse_half(name, instead)
    return y


def bf16_to_f16(b: np.ndarray, name: str, instead: str = HALF_INSTEAD, out: np.ndarray | None = None) -> np.ndarray:
    """uint16 bfloat16 bits (1-D) → float16 (into `out`, any 1-D buffer of as many bytes, when given, else a new
    array): float16 normals in integer passes two elements a word, the rest (~0.2% of a trained weight: zeros,
    tiny values, ±inf, nan) from the table of every bit pattern."""
    out = np.empty(b.shape, np.uint16) if out is None else out.view(np.uint16)
    words = min(b.size, BLOCK_ELEMENTS) // 2
    t = np.empty(words, np.uint32)
    other = np.empty(2 * words + 1, np.bool_)
    for start in range(0, b.size, BLOCK_ELEMENTS):
        src, dst = b[start : start + BLOCK_ELEMENTS], out[start : start + BLOCK_ELEMENTS]
        n = src.size
        even = n - n % 2
        s32, d32, t32 = src[:even].view(np.uint32), dst[:even].view(np.uint32), t[: even // 2]
        # a normal's float16 bits are sign | (magnitude - REBIAS) << 3, and over the normals' magnitudes
        # magnitude - REBIAS = (magnitude mod 2^12) xor 2^11: a shift, a mask, an xor and the sign, no carries
        np.left_shift(s32, 3, out=d32)
        d32 &= 0x7FF8 * PAIR
        d32 ^= 0x4000 * PAIR
        np.bitwise_and(s32, 0x8000 * PAIR, out=t32)
        d32 |= t32
        # non-normals: (magnitude - LOW) mod 2^16 >= SPAN, computed as magnitude + 2^15 - LOW (no carry into the
        # next half word) xor 2^15
        np.bitwise_and(s32, 0x7FFF * PAIR, out=t32)
        t32 += (0x8000 - F16_NORMAL_LOW) * PAIR
        t32 ^= 0x8000 * PAIR
        np.greater_equal(t32.view(np.uint16), F16_NORMAL_SPAN, out=other[:even])
        other[even:n] = True
        if other[:n].any():
            where = np.flatnonzero(other[:n])
            bits = src[where]
            magnitude = bits & 0x7FFF
            if bool(((magnitude >= OVERFLOW_LOW) & (magnitude < 0x7F80)).any()):
                refuse_half(name, instead)
            dst[where] = _fix_up_table()[bits]
    return out.view(np.float16)


def _fix_up_table() -> np.ndarray:
    """float16 bits of every bfloat16 bit pattern, through float32 and numpy's round-to-nearest-even cast as torch's
    conversion goes (the overflowing ones become ±inf: refused before they are looked up; a nan stays quiet, as
    torch's); built once, on the first cast (~1 ms)."""
    global FIX_UP
    if FIX_UP is None:
        values = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            bits = values.astype(np.float16).view(np.uint16)
        FIX_UP = bits | np.where(np.isnan(values), np.uint16(0x0200), np.uint16(0))
    return FIX_UP

