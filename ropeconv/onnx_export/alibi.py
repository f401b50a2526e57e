"""The plan's ALiBi bias as an ONNX subgraph: attention_mask → bias [batch, heads, 1, 1, total], added to the
scores [batch, heads, 1, seq, total] before the mask.

    bias[h, j] = (m_h · key_j) / s,   s = factor (STATIC) or max(1, total / original_ctx) (PROPORTIONAL)

key_j is what transformers adds for key j (softmax is shift-invariant per row, so any per-row offset of
−m·(i − j) is the same attention): BLOOM's (cumsum(mask) − 1)·mask, MPT's j − (total − 1). total, the keys
in view (past + new, padding included), is the attention_mask's length; the divisor is evaluated per call,
never at trace time. The product is divided after it is formed, in float32, as ropeconv.runtime divides the
bias transformers built.
Constants are named alibi/* so that a model's slopes and scale can be found (and reset, in tests).
"""

from __future__ import annotations

import numpy as np

from ropeconv.onnx_export.graph import DOUBLE, FLOAT, GraphBuilder
from ropeconv.positions import AlibiPlan, LengthRule

SLOPES = "alibi/slopes"  # float32 [heads], the base slopes m_h (before scaling)
SCALE = "alibi/scale"  # float32 scalar, the STATIC divisor
ORIGINAL_CTX = "alibi/original_ctx"  # float64 scalar, the PROPORTIONAL rule's L


def alibi_bias(g: GraphBuilder, plan: AlibiPlan, keys: str | None, attention_mask: str) -> str:
    heads = len(plan.slopes)
    slopes = g.op("Reshape", [g.const(np.asarray(plan.slopes, np.float32), name=SLOPES), g.ints(1, heads, 1, 1, 1)])
    bias = g.op("Mul", [slopes, _key_positions(g, keys, attention_mask)])  # [b or 1, heads, 1, 1, total]
    return g.op("Div", [bias, _divisor(g, plan, attention_mask)], hint="alibi/bias")


def _total(g: GraphBuilder, attention_mask: str) -> str:
    return g.op("Squeeze", [g.op("Shape", [attention_mask], start=1, end=2), g.ints(0)])  # scalar int64


def _key_positions(g: GraphBuilder, keys: str | None, attention_mask: str) -> str:
    """[b, 1, 1, 1, total] (mask) or [1, 1, 1, 1, total] (cache), float32."""
    if keys == "mask":
        position = g.op("Mul", [g.op("Sub", [g.op("CumSum", [attention_mask, g.const(1, np.int64)]),
                                             g.const(1, np.int64)]), attention_mask])
        return g.op("Unsqueeze", [g.op("Cast", [position], to=FLOAT), g.ints(1, 2, 3)])
    if keys == "cache":
        total = _total(g, attention_mask)
        index = g.op("Range", [g.const(0, np.int64), total, g.const(1, np.int64)])
        position = g.op("Sub", [index, g.op("Sub", [total, g.const(1, np.int64)])])
        return g.op("Reshape", [g.op("Cast", [position], to=FLOAT), g.ints(1, 1, 1, 1, -1)])
    raise AssertionError(keys)


def _divisor(g: GraphBuilder, plan: AlibiPlan, attention_mask: str) -> str:
    if plan.length_rule is LengthRule.STATIC:
        return g.const(plan.factor, name=SCALE)
    if plan.length_rule is LengthRule.PROPORTIONAL:
        # max(1, total / L) in float64, as ropeconv.positions.alibi evaluates it, then float32
        total = g.op("Cast", [_total(g, attention_mask)], to=DOUBLE)
        ratio = g.op("Div", [total, g.const(plan.original_ctx, np.float64, name=ORIGINAL_CTX)])
        return g.op("Cast", [g.op("Max", [ratio, g.const(1.0, np.float64)])], to=FLOAT, hint="alibi/scale")
    raise AssertionError(plan.length_rule)


def default_constants() -> dict[str, np.ndarray | np.generic]:
    """The values that undo the extension (slopes unscaled at every length), for sensitivity tests."""
    return {SCALE: np.float32(1.0), ORIGINAL_CTX: np.float64(np.finfo(np.float64).max)}
