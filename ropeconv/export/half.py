"""The one float16 range check every writer of float16 weights makes."""

from __future__ import annotations

from typing import NoReturn

from ropeconv.errors import UnsupportedError

HALF_INSTEAD = "--outtype bf16 or f32"


def refuse_half(name: str, instead: str = HALF_INSTEAD) -> NoReturn:
    raise UnsupportedError(f"tensor {name!r} has values beyond float16's range (±65504); use {instead}")


def check_half(name: str, x, y, instead: str = HALF_INSTEAD) -> None:
    """Refuse when y = x cast to float16 holds an inf that x did not. aminmax first: one cheap pass in the
    common case."""
    import torch

    if x.dtype == torch.float16:
        return
    lo, hi = torch.aminmax(y)
    if torch.isfinite(lo) and torch.isfinite(hi):
        return
    if bool(torch.isinf(y).any()) and not bool(torch.isinf(x).any()):
        refuse_half(name, instead)
