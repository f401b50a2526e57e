"""The plan's rotary embedding as an ONNX subgraph: position_ids → (cos, sin), float32, each [batch, seq, 1, rotary_dim]
(beside queries and keys [batch, seq, heads, head_dim], the layout the fused attention operator takes).

    angle[p, j] = p · inv_freq_j,  cos/sin = (cos, sin)(cat(angle, angle)) · attention_factor

The running length is n = max(position_ids) + 1 of the call, as transformers reads it, so it equals past
+ new tokens for contiguous positions and the graph decides per call, never at trace time:
- static rules: inv_freq is a float32 constant (the correctly rounded plan values);
- LongRoPE (SWITCH): Where(n > original_ctx, long, short) between two constants, as transformers 5 does
  per forward; keys already in the KV cache keep the rotation they were written with (transformers does
  not re-prefill either; llama.cpp decides once per context, from n_ctx);
- dynamic NTK: b' = b·((s·max(n, L)/L) − (s − 1))^(d/(d−2)) and inv_freq = b'^(−2j/d), computed in float64
  from n and cast to float32, like ropeconv.positions does for the reference.
Constants are named rope/* so that a model's position math can be found (and tampered with, in tests).
"""

from __future__ import annotations

import numpy as np

from ropeconv.onnx_export.graph import DOUBLE, FLOAT, GraphBuilder
from ropeconv.positions import LengthRule, RopePlan, default_inv_freq, inv_freq_at

INV_FREQ = "rope/inv_freq"
INV_FREQ_SHORT = "rope/inv_freq_short"
INV_FREQ_LONG = "rope/inv_freq_long"
ATTENTION_FACTOR = "rope/attention_factor"
DYNAMIC_EXPONENT = "rope/dynamic_exponent"  # d/(d−2); 0 makes b' = b


def cos_sin(g: GraphBuilder, plan: RopePlan, position_ids: str) -> tuple[str, str]:
    factor = g.const(plan.attention_factor, name=ATTENTION_FACTOR) if plan.attention_factor != 1.0 else None
    return _rotation(g, _inv_freq(g, plan, position_ids), position_ids, factor, "rope/")


def unscaled_cos_sin(g: GraphBuilder, theta: float, rotary_dim: int, position_ids: str) -> tuple[str, str]:
    """Plain rope at base `theta`, for layers a method leaves alone (gemma3's sliding layers); its constant is
    unnamed, outside the plan's rope/* names."""
    return _rotation(g, g.const(default_inv_freq(theta, rotary_dim).astype(np.float32)), position_ids)


def _rotation(g: GraphBuilder, inv_freq: str, position_ids: str, factor: str | None = None,
              hint: str = "") -> tuple[str, str]:
    """cos and sin [b, s, 1, d] of position × inv_freq over both halves of the rotated dims, times factor."""
    positions = g.op("Unsqueeze", [g.op("Cast", [position_ids], to=FLOAT), g.ints(-1)])  # [b, s, 1]
    angles = g.op("Mul", [positions, inv_freq])  # [b, s, d/2]
    emb = g.op("Concat", [angles, angles], axis=-1)
    cos, sin = g.op("Cos", [emb]), g.op("Sin", [emb])
    if factor is not None:
        cos, sin = g.op("Mul", [cos, factor]), g.op("Mul", [sin, factor])
    axis = g.ints(2)
    return (g.op("Unsqueeze", [cos, axis], hint=hint and f"{hint}cos"),
            g.op("Unsqueeze", [sin, axis], hint=hint and f"{hint}sin"))


def _running_length(g: GraphBuilder, position_ids: str) -> str:
    """max(position_ids) + 1, a scalar int64."""
    return g.op("Add", [g.op("ReduceMax", [position_ids], keepdims=0), g.const(1, np.int64)], hint="rope/length")


def _inv_freq(g: GraphBuilder, plan: RopePlan, position_ids: str) -> str:
    if plan.length_rule is LengthRule.STATIC:
        return g.const(inv_freq_at(plan, plan.original_ctx), name=INV_FREQ)
    if plan.length_rule is LengthRule.SWITCH:
        short = g.const(inv_freq_at(plan, plan.original_ctx), name=INV_FREQ_SHORT)
        long = g.const(inv_freq_at(plan, plan.original_ctx + 1), name=INV_FREQ_LONG)
        beyond = g.op("Greater", [_running_length(g, position_ids), g.const(plan.original_ctx, np.int64)])
        return g.op("Where", [beyond, long, short], hint="rope/inv_freq")
    if plan.length_rule is LengthRule.DYNAMIC_NTK:
        return _dynamic_inv_freq(g, plan, position_ids)
    raise AssertionError(plan.length_rule)


def _dynamic_inv_freq(g: GraphBuilder, plan: RopePlan, position_ids: str) -> str:
    d, original = plan.rotary_dim, plan.original_ctx
    f64 = np.float64
    length = g.op("Cast", [g.op("Max", [_running_length(g, position_ids), g.const(original, np.int64)])], to=DOUBLE)
    factor = g.const(plan.factor, f64)
    # (s·l/L) − (s − 1), in the order transformers and ropeconv.positions evaluate it
    ratio = g.op("Sub", [g.op("Div", [g.op("Mul", [factor, length]), g.const(original, f64)]),
                         g.op("Sub", [factor, g.const(1.0, f64)])])
    base = g.op("Mul", [g.const(plan.theta, f64), g.op("Pow", [ratio, g.const(d / (d - 2), f64, name=DYNAMIC_EXPONENT)])])
    exponents = g.const(np.arange(0, d, 2, dtype=f64) / d, f64)
    inv = g.op("Reciprocal", [g.op("Pow", [base, exponents])])
    return g.op("Cast", [inv], to=FLOAT, hint="rope/inv_freq")


def default_constants(base_theta: float, rotary_dim: int) -> dict[str, np.ndarray | np.generic]:
    """The values the rope/* constants take with no extension at all, on the base's own rope base (for
    sensitivity tests)."""
    plain = default_inv_freq(base_theta, rotary_dim).astype(np.float32)
    return {INV_FREQ: plain, INV_FREQ_SHORT: plain, INV_FREQ_LONG: plain,
            ATTENTION_FACTOR: np.float32(1.0), DYNAMIC_EXPONENT: np.float64(0.0)}
