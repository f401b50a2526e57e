"""Arbitrary per-pair frequency factors (the general static case of PI, YaRN, llama3, LongRoPE).

    θ'_j = θ_j / λ_j   for a user-given λ (rotary_dim/2 values, each > 0);   cos/sin × attention_factor.

transformers has no named type for this; `longrope` with short_factor = long_factor carries it exactly.
"""

from __future__ import annotations

from pathlib import Path

from ropeconv.errors import InputError
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
    rope_freqs_carrier,
)
from ropeconv.positions import RopePlan, RopeScheme

NAME = "freqs"
SUMMARY = "any per-pair frequency divisors from a file"
OPTIONS = (
    Option("factors", Path, 'JSON file: a list of rotary_dim/2 divisors, or {"factors": [...]}'),
    Option("attention_factor", float, "multiplier on cos/sin (default 1)"),
)
CELLS = {
    "safetensors": Cell(Support.CARRIER, "rope_type longrope with short_factor = long_factor"),
    "gguf": Cell(Support.CARRIER, "rope_freqs tensor + attn_factor; llama only"),
    "onnx": Cell(Support.CARRIER, "float32 inv_freq and attention-factor constants in the graph"),
    "mlx": Cell(Support.REFUSED, "a longrope carrier: mlx-lm's SuScaledRoPE ignores attention_factor and computes its own scale; use --to safetensors, gguf or onnx"),
    "openvino": Cell(Support.CARRIER, "a longrope carrier (short = long factors) traced by optimum-intel: float32 inv_freq and attention-factor constants in the IR"),
}


def read_factors(path: Path, n_pairs: int) -> tuple[float, ...]:
    data = read_json_file("--factors", path)
    if isinstance(data, dict):
        if "factors" not in data:
            raise InputError(f'--factors {path}: expected a list or an object with a "factors" list')
        data = data["factors"]
    return check_factor_list(f"--factors {path}", data, n_pairs)


def check(request: ExtendRequest):
    """The options' own rules (no checkpoint needed); returns the factors file."""
    path = request.options.get("factors")
    if path is None:
        raise InputError("--method freqs needs --factors FILE (JSON list of rotary_dim/2 divisors)")
    return path


def plan(scheme: RopeScheme, request: ExtendRequest) -> RopePlan:
    n = resolve_lengths(scheme, request)
    path = check(request)
    factors = read_factors(Path(path), scheme.n_pairs)
    attention = require_positive("--attention-factor", request.option("attention_factor", 1.0))
    return build_plan(
        NAME,
        scheme,
        n,
        factors,
        attention_factor=attention,
        params={"factor": n.factor, "attention_factor": attention, "factors_file": Path(path).name},
    )


def hf_rope_parameters(plan: RopePlan) -> dict:
    return {
        "rope_type": "longrope",
        "short_factor": list(plan.divisors),
        "long_factor": list(plan.divisors),
        "factor": plan.factor,
        "original_max_position_embeddings": plan.original_ctx,
        "attention_factor": plan.attention_factor,
    }


def gguf_declaration(plan: RopePlan, arch) -> GgufDeclaration:
    return rope_freqs_carrier(plan, arch, "per-pair factors")
