"""Position Interpolation — Chen et al. 2023, arXiv 2306.15595.

    f'(x, m) = f(x, m·L/L')   ⇔   θ'_j = θ_j / s,   s = L'/L;   no attention scaling.
"""

from __future__ import annotations

from ropeconv.methods.base import Cell, ExtendRequest, GgufDeclaration, Support, build_plan, resolve_lengths
from ropeconv.positions import RopePlan, RopeScheme

NAME = "linear"
SUMMARY = "Position Interpolation: every frequency divided by the factor"
OPTIONS = ()
CELLS = {
    "safetensors": Cell(Support.EXACT, "rope_type linear"),
    "gguf": Cell(Support.EXACT, "rope.scaling.type linear + factor"),
    "onnx": Cell(Support.CARRIER, "float32 inv_freq constant in the graph"),
    "mlx": Cell(Support.EXACT, "rope_scaling type linear: nn.RoPE at scale 1/factor"),
    "openvino": Cell(Support.CARRIER, "rope_type linear traced by optimum-intel's exporter: float32 inv_freq constants in the IR"),
}


def plan(scheme: RopeScheme, request: ExtendRequest) -> RopePlan:
    n = resolve_lengths(scheme, request)
    return build_plan(
        NAME,
        scheme,
        n,
        (n.factor,) * scheme.n_pairs,
        params={"factor": n.factor},
    )


def hf_rope_parameters(plan: RopePlan) -> dict:
    return {"rope_type": "linear", "factor": plan.factor}


def gguf_declaration(plan: RopePlan, arch) -> GgufDeclaration:
    return GgufDeclaration(kv={"rope.scaling.type": ("str", "linear"), "rope.scaling.factor": ("f32", plan.factor)})
