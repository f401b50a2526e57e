"""Evaluate a RopePlan: inverse frequencies and attention factor at a running length.

Computed in float64; a runtime computes in float32, and the float32 cast of these values is the
correctly rounded target its own arithmetic should land within a few ulp of.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ropeconv.positions.plan import LengthRule, RopePlan

if TYPE_CHECKING:
    import numpy as np


def default_inv_freq(theta: float, rotary_dim: int) -> np.ndarray:
    """θ_j = b^(-2j/d), j = 0..d/2-1 (Su et al. 2021)."""
    import numpy as np  # here: `ropeconv inspect` and `--help` plan nothing and need no numpy (~0.1 s)

    exponents = np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim
    return 1.0 / np.power(float(theta), exponents)


def dynamic_ntk_theta(theta: float, rotary_dim: int, factor: float, original_ctx: int, seq_len: int) -> float:
    """b' = b·((s·l/L) − (s−1))^(d/(d−2)) with l = max(seq_len, L): emozilla's dynamic NTK as transformers runs it."""
    length = max(seq_len, original_ctx)
    return theta * ((factor * length / original_ctx) - (factor - 1)) ** (rotary_dim / (rotary_dim - 2))


def inv_freq_at(plan: RopePlan, seq_len: int) -> np.ndarray:
    """inv_freq for a forward pass whose largest position is seq_len - 1."""
    if plan.length_rule is LengthRule.DYNAMIC_NTK:
        theta = dynamic_ntk_theta(plan.theta, plan.rotary_dim, plan.factor, plan.original_ctx, seq_len)
        return default_inv_freq(theta, plan.rotary_dim)
    divisors = plan.divisors
    if plan.length_rule is LengthRule.SWITCH and seq_len > plan.original_ctx:
        assert plan.long_divisors is not None
        divisors = plan.long_divisors
    import numpy as np

    return default_inv_freq(plan.theta, plan.rotary_dim) / np.asarray(divisors, dtype=np.float64)


def attention_factor_at(plan: RopePlan, seq_len: int) -> float:
    """Multiplier on cos and sin (so on q and k); no supported rule varies it with length."""
    del seq_len
    return plan.attention_factor
