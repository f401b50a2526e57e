"""ALiBi (Press et al. 2022) and its Position Interpolation (Al-Khateeb et al. 2023, arXiv 2310.13017).

    B_h(i, j) = −m_h·(i − j),   m_h = 2^(−8h/H)            (H a power of two)
    PI:  m_h' = m_h / s,   s = L'/L                         (static: positions divided by s)
    proportional: s(n) = max(1, n / L) for n keys in view   (BTLM/JAIS `train_seq_len` convention)

For H not a power of two the slopes of the next lower power n2 are followed by every other slope of
2·n2 (BLOOM, ggml); MPT's ceil-based interleave gives the same values (tested).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ropeconv.positions.plan import AlibiPlan, LengthRule

if TYPE_CHECKING:
    import numpy as np

MAX_BIAS = 8.0  # what transformers' BLOOM and MPT hard-code, and llama.cpp's default


def base_slopes(n_heads: int, max_bias: float = MAX_BIAS) -> np.ndarray:
    """m_h in float64, as ggml computes them: m0^(h+1) for h < n2, then m1^(2(h−n2)+1)."""
    import numpy as np  # here: the method table imports this module, and `ropeconv inspect` needs no numpy

    n2 = 2 ** int(math.floor(math.log2(n_heads)))
    m0 = 2.0 ** (-max_bias / n2)
    m1 = 2.0 ** (-(max_bias / 2) / n2)
    return np.array([m0 ** (h + 1) if h < n2 else m1 ** (2 * (h - n2) + 1) for h in range(n_heads)])


def alibi_divisor(rule: LengthRule, factor: float, original_ctx: int, kv_len: int) -> float:
    """The divisor of every slope when kv_len keys are in view (cache included)."""
    if rule is LengthRule.PROPORTIONAL:
        return max(1.0, kv_len / original_ctx)
    return factor


def alibi_scale_at(plan: AlibiPlan, kv_len: int) -> float:
    return alibi_divisor(plan.length_rule, plan.factor, plan.original_ctx, kv_len)
