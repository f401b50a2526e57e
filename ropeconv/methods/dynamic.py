"""Dynamic NTK — emozilla 2023, as transformers' `dynamic` rope type runs it.

    l > L:  b' = b · ((s·l/L) − (s−1))^(d/(d−2)),   else b' = b;   l = running length, no attention scaling.

transformers takes L from max_position_embeddings, so the declared context stays the original one.
"""

from __future__ import annotations

from ropeconv.methods.base import Cell, ExtendRequest, Support, resolve_lengths
from ropeconv.positions import LengthRule, RopePlan, RopeScheme

NAME = "dynamic"
SUMMARY = "Dynamic NTK: base recomputed from the running length beyond the original context"
OPTIONS = ()
CELLS = {"safetensors": Cell(Support.EXACT, "rope_type dynamic, max_position_embeddings kept at the original")}


def plan(scheme: RopeScheme, request: ExtendRequest) -> RopePlan:
    n = resolve_lengths(scheme, request)
    return RopePlan(
        method=NAME,
        theta=scheme.theta,
        rotary_dim=scheme.rotary_dim,
        original_ctx=n.original_ctx,
        target_ctx=n.target_ctx,
        factor=n.factor,
        divisors=(1.0,) * scheme.n_pairs,
        length_rule=LengthRule.DYNAMIC_NTK,
        params={"factor": n.factor},
    )


def hf_rope_parameters(plan: RopePlan) -> dict:
    return {"rope_type": "dynamic", "factor": plan.factor}
