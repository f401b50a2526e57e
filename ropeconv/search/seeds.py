"""The initial population's seeds: what PI, NTK, YaRN and dynamic NTK do to each rotary pair at the target length,
read off ropeconv's own plans for those methods (never re-derived here).

    λ_j = θ_j / θ'_j(L')     θ_j: the base's frequencies, θ'_j(L'): the method's plan evaluated at L' tokens

NTK and dynamic NTK change the base rather than divide frequencies; their λ_j = (b'/b)^(2j/d) comes out of the
same ratio. YaRN's and PI's own attention factors are not part of a seed: every candidate is scored with
LongRoPE's attention factor, as the paper's search does.
"""

from __future__ import annotations

import numpy as np

from ropeconv import methods
from ropeconv.methods.base import ExtendRequest
from ropeconv.positions import RopeScheme, default_inv_freq, inv_freq_at

SEED_METHODS = ("linear", "ntk", "yarn", "dynamic")  # PI, NTK-aware, YaRN, dynamic NTK (at the target length)
SEED_NAMES = {"linear": "PI", "ntk": "NTK", "yarn": "YaRN", "dynamic": "dynamic NTK"}


def per_pair_factors(scheme: RopeScheme, plan, seq_len: int) -> np.ndarray:
    """θ_j / θ'_j for a plan evaluated at seq_len tokens (float64)."""
    return default_inv_freq(scheme.theta, scheme.rotary_dim) / inv_freq_at(plan, seq_len)


def seed_factors(scheme: RopeScheme, original_ctx: int, target_ctx: int) -> dict[str, np.ndarray]:
    """{method name: λ} for the seed methods, each planned for original_ctx → target_ctx."""
    request = ExtendRequest(target_ctx=target_ctx, original_ctx=original_ctx)
    return {name: per_pair_factors(scheme, methods.get(name).plan(scheme, request), target_ctx)
            for name in SEED_METHODS}
