"""LongRoPE — Ding et al. 2024, arXiv 2402.13753 (Phi-3's short/long factor sets).

    θ'_j = θ_j / λ_j,   λ = short_factor while the running length ≤ L, long_factor beyond
    mscale = sqrt(1 + ln s / ln L)  (s = L'/L > 1, else 1), multiplied into cos and sin

The factor lists come from a JSON file: {"short_factor": [...], "long_factor": [...]}, d/2 values each.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ropeconv.errors import InputError, UnsupportedError
from ropeconv.methods.base import (
    Cell,
    ExtendRequest,
    GgufDeclaration,
    Option,
    Support,
    build_plan,
    check_factor_list,
    read_json_file,
    require_positive,
    resolve_lengths,
)
from ropeconv.positions import LengthRule, RopePlan, RopeScheme

NAME = "longrope"
SUMMARY = "LongRoPE: searched per-pair factors, short set up to the original length, long set beyond"
OPTIONS = (
    Option("factors", Path, 'JSON file {"short_factor": [...], "long_factor": [...]} (rotary_dim/2 each)'),
    Option("attention_factor", float, "multiplier on cos/sin; default sqrt(1 + ln s / ln L)"),
)
CELLS = {
    "safetensors": Cell(Support.EXACT, "rope_type longrope; original_max_position_embeddings also at the top level, "
                        "where transformers 4.x reads it"),
    "gguf": Cell(
        Support.EXACT,
        "rope_factors_long/short + attn_factor + original_context_length (phi3; llama with type longrope); "
        "llama.cpp picks the set per context size (n_ctx > original → long), not per sequence, and rounds "
        "contexts up to 256 tokens (an original context under 256 is refused)",
    ),
    "onnx": Cell(Support.EXACT, "short and long inv_freq constants, chosen in the graph per call by "
                 "max(position_ids) + 1 > original (transformers' rule); attention-factor constant"),
    "mlx": Cell(Support.REFUSED, "mlx-lm's SuScaledRoPE builds the long factors only (wrong below the original length, where transformers uses the short ones) and ignores attention_factor; use --to safetensors, gguf or onnx"),
    "openvino": Cell(Support.EXACT, "short and long factors in the IR, switched in the graph by optimum-intel's LongRoPE patch when the last position + 1 exceeds the original length (as transformers), attention factor honoured"),
}


def default_attention_factor(factor: float, original_ctx: int) -> float:
    return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original_ctx))


def read_factor_sets(path: Path, n_pairs: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    data = read_json_file("--factors", path)
    if not isinstance(data, dict) or "short_factor" not in data or "long_factor" not in data:
        raise InputError(f'--factors {path}: expected an object with "short_factor" and "long_factor" lists')
    short = check_factor_list(f"--factors {path}: short_factor", data["short_factor"], n_pairs)
    long = check_factor_list(f"--factors {path}: long_factor", data["long_factor"], n_pairs)
    return short, long


def check(request: ExtendRequest):
    """The options' own rules (no checkpoint needed); returns the factors file."""
    path = request.options.get("factors")
    if path is None:
        raise InputError("--method longrope needs --factors FILE (JSON with short_factor and long_factor)")
    return path


def plan(scheme: RopeScheme, request: ExtendRequest) -> RopePlan:
    path = check(request)
    short, long = read_factor_sets(Path(path), scheme.n_pairs)
    return plan_from_factors(scheme, request, short, long, factors_file=Path(path).name)


def plan_from_factors(scheme: RopeScheme, request: ExtendRequest, short, long, factors_file: str | None = None) -> RopePlan:
    """The plan for given factor lists (what plan() builds from the file; `ropeconv search` evaluates candidates
    through it, so a searched file baked by extend gives the very plan that was scored)."""
    n = resolve_lengths(scheme, request)
    explicit = request.options.get("attention_factor")
    attention = (
        require_positive("--attention-factor", explicit)
        if explicit is not None
        else default_attention_factor(n.factor, n.original_ctx)
    )
    params: dict[str, Any] = {"factor": n.factor, "attention_factor": attention}
    if factors_file is not None:
        params["factors_file"] = factors_file
    return build_plan(
        NAME,
        scheme,
        n,
        tuple(float(x) for x in short),
        long_divisors=tuple(float(x) for x in long),
        attention_factor=attention,
        length_rule=LengthRule.SWITCH,
        params=params,
    )


def hf_rope_parameters(plan: RopePlan) -> dict:
    return {
        "rope_type": "longrope",
        "short_factor": list(plan.divisors),
        "long_factor": list(plan.long_divisors or ()),
        "factor": plan.factor,
        "original_max_position_embeddings": plan.original_ctx,
        "attention_factor": plan.attention_factor,
    }


LLAMACPP_CTX_STEP = 256  # src/llama-context.cpp: n_ctx = GGML_PAD(n_ctx, 256)


def gguf_declaration(plan: RopePlan, arch) -> GgufDeclaration:
    if arch.longrope is None:
        raise UnsupportedError(
            f"LongRoPE factor sets cannot be written for GGUF architecture {arch.name}: llama.cpp reads "
            "rope_factors_long/short only for phi3 and llama; use --to safetensors"
        )
    if plan.original_ctx < LLAMACPP_CTX_STEP and plan.long_divisors is not None:
        raise UnsupportedError(
            f"LongRoPE with an original context of {plan.original_ctx}: llama.cpp rounds every context up to a "
            f"multiple of {LLAMACPP_CTX_STEP} and picks the long factors above the original, so the short factors "
            "would never apply; use --to safetensors"
        )
    # no rope.scaling.factor: llama.cpp would add a 1/factor interpolation on top of the factors
    kv: dict[str, tuple[str, Any]] = {
        "rope.scaling.original_context_length": ("u32", plan.original_ctx),
        "rope.scaling.attn_factor": ("f32", plan.attention_factor),
    }
    if arch.longrope == "typed":
        kv["rope.scaling.type"] = ("str", "longrope")
    return GgufDeclaration(
        kv=kv,
        tensors={"rope_factors_long.weight": tuple(plan.long_divisors or ()), "rope_factors_short.weight": plan.divisors},
    )
