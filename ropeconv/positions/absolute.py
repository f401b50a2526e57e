"""Learned absolute position tables, extended by linear interpolation along positions
(Karypis, McAuley, Karypis 2023, arXiv 2310.14633):

    E'[p] = (1 − α)·E[⌊x⌋] + α·E[⌈x⌉],   x = p·(L − 1)/(L' − 1),   α = x − ⌊x⌋,   p = 0 … L'−1

The grid is aligned on both ends (row 0 and row L−1 are kept exactly), so no row is extrapolated.
Rows before the table's offset (OPT keeps 2 unused rows in front) are copied unchanged.
"""

from __future__ import annotations

import numpy as np

from ropeconv.positions.plan import AbsolutePlan


def interpolate_rows(table: np.ndarray, rows: int) -> np.ndarray:
    """[L, d] → [rows, d], computed in float64."""
    src = np.asarray(table, dtype=np.float64)
    n = src.shape[0]
    if n == 1 or rows == 1:
        return np.repeat(src[:1], rows, axis=0)
    x = np.arange(rows, dtype=np.float64) * ((n - 1) / (rows - 1))
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    alpha = (x - lo)[:, None]
    return (1.0 - alpha) * src[lo] + alpha * src[hi]


def resample_table(table: np.ndarray, plan: AbsolutePlan) -> np.ndarray:
    """The whole stored table (offset rows included) for the plan's target context, in float64."""
    head = np.asarray(table[: plan.offset], dtype=np.float64)
    return np.concatenate([head, interpolate_rows(table[plan.offset :], plan.target_ctx)])
