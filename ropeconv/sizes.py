"""Byte sizes as users write them: 5GB, 500MB, 2GiB (decimal and binary units)."""

from __future__ import annotations

import re

from ropeconv.errors import InputError

DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3  # transformers' default "5GB"; here so a job needs no writer import
MAX_BYTES = 2**60  # 1 EiB: more than any machine's memory or disk; larger sizes are typos (or 400 nines)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4,
          "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}  # fmt: skip


def parse_bytes(flag: str, text: str) -> int:
    """A positive size of at most MAX_BYTES (1 EiB), in bytes."""
    match = _SIZE.match(text)
    unit = match.group(2).upper() if match else None
    shown = repr(text) if len(text) <= 40 else repr(text[:40]) + "…"
    if not match or unit not in _UNITS:
        raise InputError(f"{flag} {shown}: expected a size like 5GB, 500MB or 2GiB")
    value = float(match.group(1)) * _UNITS[unit]  # 400 nines: inf, refused below rather than an OverflowError
    if not value <= MAX_BYTES:
        raise InputError(f"{flag} {shown}: larger than 1 EiB ({MAX_BYTES} bytes), the most ropeconv takes")
    if int(value) <= 0:
        raise InputError(f"{flag} must be positive")
    return int(value)


def human_bytes(n: float) -> str:
    """Binary units, as --max-memory examples are written (20GiB)."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}B"
