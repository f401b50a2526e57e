"""No extension: the base's own position math, written to other formats (a GGUF or ONNX of the base to
compare against, or an ALiBi model for llama.cpp, which cannot carry scaled slopes).

    θ'_j = θ_j,   m_h' = m_h,   E' = E,   L' = L
"""

from __future__ import annotations

from ropeconv.errors import InputError
from ropeconv.methods.base import Cell, ExtendRequest, GgufDeclaration, Lengths, Support, build_plan, check_request
from ropeconv.positions import AbsolutePlan, AlibiPlan, PositionPlan, PositionScheme
from ropeconv.positions.alibi import base_slopes

NAME = "none"
SUMMARY = "no extension: the base's position math as it is, converted to the chosen formats"
TAKES_LENGTH = False  # neither --factor nor --target-ctx
POSITIONS = ("rope", "alibi", "absolute")
OPTIONS = ()
CELLS = {
    "safetensors": Cell(Support.EXACT, "the base's own config"),
    "gguf": Cell(Support.EXACT, "the base's own keys (every converted architecture, BLOOM and MPT included)"),
    "onnx": Cell(Support.EXACT, "the base's own math in the graph"),
    "mlx": Cell(Support.EXACT, "the base's own rope_theta, unscaled"),
    "openvino": Cell(Support.EXACT, "the base's own rope, traced by optimum-intel into the IR"),
}


def plan(scheme: PositionScheme, request: ExtendRequest) -> PositionPlan:
    check_request(request, takes_length=False)
    original = request.original_ctx or scheme.original_ctx
    if not original:
        raise InputError("this config states no training length; pass --original-ctx")
    n = Lengths(original_ctx=int(original), target_ctx=int(original), factor=1.0)
    if scheme.kind == "alibi":
        return AlibiPlan(NAME, tuple(float(m) for m in base_slopes(scheme.n_heads, scheme.max_bias)),
                         n.original_ctx, n.target_ctx, 1.0)
    if scheme.kind == "absolute":
        if request.original_ctx not in (None, scheme.original_ctx):
            raise InputError(f"--original-ctx: the position table holds {scheme.original_ctx} positions")
        return AbsolutePlan(NAME, scheme.table, scheme.offset, n.original_ctx, n.target_ctx, 1.0)
    return build_plan(NAME, scheme, n, (1.0,) * scheme.n_pairs)


def hf_rope_parameters(plan: PositionPlan) -> dict:
    return {"rope_type": "default"} if plan.kind == "rope" else {}


def gguf_declaration(plan: PositionPlan, arch) -> GgufDeclaration:
    return GgufDeclaration()
