"""Llama-3.1 rope scaling ("llama3") — Meta 2024, as transformers and llama.cpp compute it.

    λ_j = 2π/θ_j,   λ_lo = L/low_freq_factor,   λ_hi = L/high_freq_factor
    λ_j < λ_hi:  θ_j            λ_j > λ_lo:  θ_j / s
    otherwise:   σ = (L/λ_j − low)/(high − low),   θ'_j = (1 − σ)·θ_j/s + σ·θ_j
    no attention scaling.   Llama-3.1 defaults: s = 8, low = 1, high = 4, L = 8192.
"""

from __future__ import annotations

import math

from ropeconv.errors import InputError
from ropeconv.methods.base import (
    Cell,
    ExtendRequest,
    GgufDeclaration,
    Option,
    Support,
    build_plan,
    require_positive,
    resolve_lengths,
    rope_freqs_carrier,
)
from ropeconv.positions import RopePlan, RopeScheme, default_inv_freq

NAME = "llama3"
SUMMARY = "Llama-3.1 scaling: high frequencies kept, low divided by s, a smooth band between"
OPTIONS = (
    Option("low_freq_factor", float, "wavelengths above L/low are divided by the factor (default 1)"),
    Option("high_freq_factor", float, "wavelengths below L/high are kept (default 4)"),
)
CELLS = {
    "safetensors": Cell(Support.EXACT, "rope_type llama3"),
    "gguf": Cell(Support.EXACT, "rope_freqs tensor (as llama.cpp's converter writes it); llama only"),
    "onnx": Cell(Support.CARRIER, "float32 inv_freq constant in the graph"),
    "mlx": Cell(Support.EXACT, "rope_scaling type llama3: Llama3RoPE"),
    "openvino": Cell(Support.CARRIER, "rope_type llama3 traced by optimum-intel's exporter: float32 inv_freq constants in the IR"),
}


def divisors(
    theta: float, rotary_dim: int, factor: float, original_ctx: int, low: float, high: float
) -> tuple[float, ...]:
    out = []
    for inv in default_inv_freq(theta, rotary_dim):
        wavelen = 2 * math.pi / inv
        if wavelen < original_ctx / high:
            out.append(1.0)
        elif wavelen > original_ctx / low:
            out.append(factor)
        else:
            smooth = (original_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return tuple(out)


def check(request: ExtendRequest) -> tuple[float, float]:
    """The options' own rules (no checkpoint needed); returns low_freq_factor, high_freq_factor."""
    low = require_positive("--low-freq-factor", request.option("low_freq_factor", 1.0))
    high = require_positive("--high-freq-factor", request.option("high_freq_factor", 4.0))
    if high <= low:
        raise InputError(f"--high-freq-factor ({high:g}) must exceed --low-freq-factor ({low:g})")
    return low, high


def plan(scheme: RopeScheme, request: ExtendRequest) -> RopePlan:
    n = resolve_lengths(scheme, request)
    low, high = check(request)
    return build_plan(
        NAME,
        scheme,
        n,
        divisors(scheme.theta, scheme.rotary_dim, n.factor, n.original_ctx, low, high),
        params={"factor": n.factor, "low_freq_factor": low, "high_freq_factor": high},
    )


def hf_rope_parameters(plan: RopePlan) -> dict:
    return {
        "rope_type": "llama3",
        "factor": plan.factor,
        "low_freq_factor": plan.params["low_freq_factor"],
        "high_freq_factor": plan.params["high_freq_factor"],
        "original_max_position_embeddings": plan.original_ctx,
    }


def gguf_declaration(plan: RopePlan, arch) -> GgufDeclaration:
    return rope_freqs_carrier(plan, arch, "llama3 scaling")
