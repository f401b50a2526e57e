"""NTK-aware scaled RoPE — bloc97 2023 (YaRN paper eq. 14–16).

    b' = b · s^(d/(d−2)),   θ'_j = b'^(−2j/d);   no attention scaling.

The lowest frequency becomes exactly θ/s (PI-like) while the highest stays unchanged.
"""

from __future__ import annotations

from ropeconv.methods.base import Cell, ExtendRequest, GgufDeclaration, Support, build_plan, resolve_lengths
from ropeconv.positions import RopePlan, RopeScheme

NAME = "ntk"
SUMMARY = "NTK-aware: a new rope base b·s^(d/(d-2)), static"
OPTIONS = ()
CELLS = {
    "safetensors": Cell(Support.EXACT, "rope_theta changed, rope_type default"),
    "gguf": Cell(Support.EXACT, "rope.freq_base changed"),
    "onnx": Cell(Support.CARRIER, "float32 inv_freq constant at the new base in the graph"),
    "mlx": Cell(Support.EXACT, "rope_theta changed, read from the top level"),
    "openvino": Cell(Support.CARRIER, "the new rope_theta traced by optimum-intel's exporter: float32 inv_freq constants in the IR"),
}


def ntk_theta(theta: float, rotary_dim: int, factor: float) -> float:
    return theta * factor ** (rotary_dim / (rotary_dim - 2))


def plan(scheme: RopeScheme, request: ExtendRequest) -> RopePlan:
    n = resolve_lengths(scheme, request)
    return build_plan(
        NAME,
        scheme,
        n,
        (1.0,) * scheme.n_pairs,
        theta=ntk_theta(scheme.theta, scheme.rotary_dim, n.factor),
        params={"factor": n.factor, "base_theta": scheme.theta},
    )


def hf_rope_parameters(plan: RopePlan) -> dict:
    return {"rope_type": "default"}


def gguf_declaration(plan: RopePlan, arch) -> GgufDeclaration:
    return GgufDeclaration(kv={"rope.freq_base": ("f32", plan.theta)})
