"""Dynamic NTK — emozilla 2023, as transformers' `dynamic` rope type runs it.

    l > L:  b' = b · ((s·l/L) − (s−1))^(d/(d−2)),   else b' = b;   l = running length, no attention scaling.

transformers takes L from max_position_embeddings, so the declared context stays the original one.
`--bake-at N` freezes the base dynamic NTK would use at N tokens: a static NTK base, exact at N,
for formats that cannot recompute it per length.
"""

from __future__ import annotations

from ropeconv.errors import InputError, UnsupportedError
from ropeconv.methods.base import (
    Cell,
    ExtendRequest,
    GgufDeclaration,
    Option,
    Support,
    build_plan,
    resolve_lengths,
)
from ropeconv.positions import LengthRule, RopePlan, RopeScheme
from ropeconv.positions.rope import dynamic_ntk_theta

NAME = "dynamic"
SUMMARY = "Dynamic NTK: base recomputed from the running length beyond the original context"
OPTIONS = (Option("bake_at", int, "freeze the base dynamic NTK uses at N tokens (static, exact at N)"),)
CELLS = {
    "safetensors": Cell(Support.EXACT, "rope_type dynamic, max_position_embeddings kept at the original"),
    "gguf": Cell(Support.REFUSED, "llama.cpp has no length-dependent base; --bake-at N writes the exact base at N"),
    "onnx": Cell(Support.EXACT, "the base computed in the graph (float64) from max(position_ids) + 1 at every call, "
                 "as transformers does; --bake-at N gives a constant"),
    "mlx": Cell(Support.EXACT, "rope_scaling type dynamic: mlx-lm's DynamicNTKScalingRoPE computes the base per call from the cache offset + length, as transformers does"),
    "openvino": Cell(Support.REFUSED, "optimum-intel traces the model at a short dummy length: transformers' dynamic update never runs and the IR holds the unscaled frequencies (13.3 in log-probability past the original context); use --method ntk or yarn for a static equivalent"),
}


def plan(scheme: RopeScheme, request: ExtendRequest) -> RopePlan:
    n = resolve_lengths(scheme, request)
    bake_at = request.options.get("bake_at")
    ones = (1.0,) * scheme.n_pairs
    if bake_at is None:
        return build_plan(NAME, scheme, n, ones, length_rule=LengthRule.DYNAMIC_NTK, params={"factor": n.factor})
    if not n.original_ctx < bake_at <= n.target_ctx:
        raise InputError(f"--bake-at {bake_at} must be above the original context {n.original_ctx} and at most the "
                         f"target {n.target_ctx}")
    theta = dynamic_ntk_theta(scheme.theta, scheme.rotary_dim, n.factor, n.original_ctx, bake_at)
    return build_plan(NAME, scheme, n, ones, theta=theta,
                      params={"factor": n.factor, "bake_at": bake_at, "base_theta": scheme.theta})


def hf_rope_parameters(plan: RopePlan) -> dict:
    if plan.length_rule is LengthRule.STATIC:  # baked: a plain base change
        return {"rope_type": "default"}
    return {"rope_type": "dynamic", "factor": plan.factor}


def gguf_declaration(plan: RopePlan, arch) -> GgufDeclaration:
    if plan.length_rule is LengthRule.DYNAMIC_NTK:
        raise UnsupportedError(
            "dynamic NTK cannot be written to GGUF: llama.cpp has no length-dependent rope base; pass "
            f"--bake-at N (e.g. --bake-at {plan.target_ctx}) for the static base dynamic NTK uses at N tokens, "
            "exact at that length"
        )
    return GgufDeclaration(kv={"rope.freq_base": ("f32", plan.theta)})
