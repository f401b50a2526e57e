"""Position Interpolation for ALiBi — Al-Khateeb, Dey, Soboleva, Hestness 2023, arXiv 2310.13017.

    B_h(i, j) = −(m_h / s)·(i − j),   s = L'/L   (static, --target-ctx / --factor)
    s(n) = max(1, n / L) for n keys in view       (--dynamic: unscaled up to L, BTLM's train_seq_len rule)
"""

from __future__ import annotations

from ropeconv.errors import InputError, UnsupportedError
from ropeconv.methods.base import Cell, ExtendRequest, GgufDeclaration, Option, Support, resolve_lengths
from ropeconv.positions import AlibiPlan, AlibiScheme, LengthRule
from ropeconv.positions.alibi import base_slopes

NAME = "alibi"
SUMMARY = "ALiBi Position Interpolation: every slope divided by the factor (or by length/original past it)"
POSITIONS = ("alibi",)
OPTIONS = (
    Option("dynamic", bool, "divide the slopes by max(1, keys in view / original context) instead of by the "
           "factor: unchanged up to the training length"),
)
CELLS = {
    "safetensors": Cell(Support.CARRIER, "config key ropeconv_alibi_scaling, applied by ropeconv.runtime.apply "
                        "(vanilla transformers ignores it); MPT's max_seq_len raised to the target"),
    "gguf": Cell(Support.REFUSED, "llama.cpp has no per-head slope tensor or position scale (max_alibi_bias "
                 "changes the ratio between slopes, not their scale); use --to onnx or safetensors, or "
                 "--method none for the unscaled model"),
    "onnx": Cell(Support.CARRIER, "float32 slope constants in the graph; --dynamic's length rule computed per call"),
    "mlx": Cell(Support.REFUSED, "mlx-lm has no BLOOM or MPT model and no ALiBi position scale; use --to onnx or safetensors"),
    "openvino": Cell(Support.REFUSED, "not proven in OpenVINO: the scaled slopes travel in ropeconv_alibi_scaling, which only ropeconv's transformers patch reads, and optimum-intel traces the unpatched model; use --to onnx or safetensors"),
}


def plan(scheme: AlibiScheme, request: ExtendRequest) -> AlibiPlan:
    if scheme.original_ctx is None and request.original_ctx is None:
        raise InputError("this config states no training length (BLOOM's does not); pass --original-ctx "
                         "(2048 for BigScience's BLOOM)")
    n = resolve_lengths(scheme, request)
    dynamic = bool(request.option("dynamic", False))
    return AlibiPlan(
        method=NAME,
        slopes=tuple(float(m) for m in base_slopes(scheme.n_heads, scheme.max_bias)),
        original_ctx=n.original_ctx,
        target_ctx=n.target_ctx,
        factor=n.factor,
        length_rule=LengthRule.PROPORTIONAL if dynamic else LengthRule.STATIC,
        params={"factor": n.factor, "dynamic": dynamic},
    )


def hf_rope_parameters(plan: AlibiPlan) -> dict:
    """What ropeconv.runtime reads from config.json (key ropeconv_alibi_scaling)."""
    return {"rule": plan.length_rule.value, "original_ctx": plan.original_ctx, "factor": plan.factor}


def gguf_declaration(plan: AlibiPlan, arch) -> GgufDeclaration:
    raise UnsupportedError(
        "--method alibi cannot be written as GGUF: llama.cpp computes ALiBi slopes from max_alibi_bias alone, "
        "which changes the ratio between heads' slopes instead of dividing them all by the factor, and has no "
        "per-head slope tensor; use --to onnx (exact) or safetensors (with ropeconv.runtime), or --method none "
        "for an unscaled GGUF"
    )
