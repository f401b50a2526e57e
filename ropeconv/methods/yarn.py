"""YaRN — Peng et al. 2023, arXiv 2309.00071 (NTK-by-parts + attention temperature).

    corr(r)  = d·ln(L / (2π r)) / (2 ln b)
    low      = max(⌊corr(β_fast)⌋, 0),  high = min(⌈corr(β_slow)⌉, d−1)      (no floor/ceil if truncate=False)
    ramp_j   = clamp((j − low)/(high − low), 0, 1)                               (high == low ⇒ high += 0.001)
    θ'_j     = (θ_j/s)·ramp_j + θ_j·(1 − ramp_j)
    mscale   = 0.1·ln s + 1   (s > 1), multiplied into cos and sin
    DeepSeek form: mscale = g(s, mscale)/g(s, mscale_all_dim), g(s, m) = 0.1·m·ln s + 1; an explicit
    attention_factor overrides both.   Defaults: β_fast = 32, β_slow = 1, truncate = True.
"""

from __future__ import annotations

import math

from ropeconv.errors import InputError, UnsupportedError
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
from ropeconv.positions import RopePlan, RopeScheme

NAME = "yarn"
SUMMARY = "YaRN: NTK-by-parts frequency ramp plus attention temperature"
OPTIONS = (
    Option("beta_fast", float, "rotations above which a pair is kept as is (default 32)"),
    Option("beta_slow", float, "rotations below which a pair is fully interpolated (default 1)"),
    Option("attention_factor", float, "multiplier on cos/sin; default 0.1·ln(s)+1"),
    Option("mscale", float, "DeepSeek-style mscale (used with --mscale-all-dim)"),
    Option("mscale_all_dim", float, "DeepSeek-style mscale_all_dim (used with --mscale)"),
    Option("truncate", bool, "floor/ceil the correction range (default on)", default=None),
)
CELLS = {
    "safetensors": Cell(Support.EXACT, "rope_type yarn"),
    "gguf": Cell(
        Support.EXACT,
        "rope.scaling.type yarn + factor + original_context_length (+ attn_factor); non-default betas or "
        "truncate off via a rope_freqs carrier on llama, refused elsewhere",
    ),
    "onnx": Cell(Support.CARRIER, "float32 inv_freq and attention-factor constants in the graph"),
    "mlx": Cell(Support.EXACT, "rope_scaling type yarn: YarnRoPE reads factor, original length, betas and mscale; a non-default attention factor or truncate off is refused, as mlx-lm reads neither"),
    "openvino": Cell(Support.CARRIER, "rope_type yarn traced by optimum-intel's exporter: float32 inv_freq and attention-factor constants in the IR (a non-default attention factor included)"),
}

BETA_FAST = 32.0
BETA_SLOW = 1.0


def get_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def correction_range(
    beta_fast: float, beta_slow: float, rotary_dim: int, theta: float, original_ctx: int, truncate: bool
) -> tuple[float, float]:
    def corr(rotations: float) -> float:
        return rotary_dim * math.log(original_ctx / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = corr(beta_fast), corr(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, rotary_dim - 1)


def ramp(low: float, high: float, n_pairs: int) -> list[float]:
    if low == high:
        high += 0.001
    return [min(max((j - low) / (high - low), 0.0), 1.0) for j in range(n_pairs)]


def attention_factor(factor: float, explicit: float | None, mscale: float | None, mscale_all_dim: float | None) -> float:
    if explicit is not None:
        return explicit
    if mscale and mscale_all_dim:
        return get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
    return get_mscale(factor)


def check(request: ExtendRequest) -> tuple[float, float]:
    """The options' own rules (no checkpoint needed); returns beta_fast, beta_slow."""
    beta_fast = require_positive("--beta-fast", request.option("beta_fast", BETA_FAST))
    beta_slow = require_positive("--beta-slow", request.option("beta_slow", BETA_SLOW))
    if beta_fast <= beta_slow:
        raise InputError(f"--beta-fast ({beta_fast:g}) must exceed --beta-slow ({beta_slow:g})")
    return beta_fast, beta_slow


def plan(scheme: RopeScheme, request: ExtendRequest) -> RopePlan:
    n = resolve_lengths(scheme, request)
    beta_fast, beta_slow = check(request)
    truncate = bool(request.option("truncate", True))
    explicit = request.options.get("attention_factor")
    if explicit is not None:
        explicit = require_positive("--attention-factor", explicit)
    mscale = request.options.get("mscale")
    mscale_all_dim = request.options.get("mscale_all_dim")
    for flag, value in (("--mscale", mscale), ("--mscale-all-dim", mscale_all_dim)):
        if value is not None:
            require_positive(flag, value)

    low, high = correction_range(beta_fast, beta_slow, scheme.rotary_dim, scheme.theta, n.original_ctx, truncate)
    # ramp = 1 interpolates (θ/s), ramp = 0 keeps θ: the divisor is 1/(ramp/s + 1 − ramp)
    divisors = tuple(1.0 / (r / n.factor + (1.0 - r)) for r in ramp(low, high, scheme.n_pairs))
    params = {"factor": n.factor, "beta_fast": beta_fast, "beta_slow": beta_slow, "truncate": truncate}
    for key, value in (("attention_factor", explicit), ("mscale", mscale), ("mscale_all_dim", mscale_all_dim)):
        if value is not None:
            params[key] = float(value)
    return build_plan(
        NAME,
        scheme,
        n,
        divisors,
        attention_factor=attention_factor(n.factor, explicit, mscale, mscale_all_dim),
        params=params,
    )


def hf_rope_parameters(plan: RopePlan) -> dict:
    p = plan.params
    out = {"rope_type": "yarn", "factor": plan.factor, "original_max_position_embeddings": plan.original_ctx}
    # Defaults are left implicit so that every transformers version reads the same values.
    if p.get("beta_fast", BETA_FAST) != BETA_FAST:
        out["beta_fast"] = p["beta_fast"]
    if p.get("beta_slow", BETA_SLOW) != BETA_SLOW:
        out["beta_slow"] = p["beta_slow"]
    for key in ("attention_factor", "mscale", "mscale_all_dim"):
        if key in p:
            out[key] = float(p[key])
    if not p.get("truncate", True):
        out["truncate"] = False
    return out


def gguf_declaration(plan: RopePlan, arch) -> GgufDeclaration:
    p = plan.params
    if p.get("beta_fast", BETA_FAST) != BETA_FAST or p.get("beta_slow", BETA_SLOW) != BETA_SLOW or not p.get(
        "truncate", True
    ):
        # llama.cpp reads betas only for grok/mistral3 and always floors/ceils the range
        return rope_freqs_carrier(plan, arch, "YaRN with non-default betas or truncate off")
    kv = {
        "rope.scaling.type": ("str", "yarn"),
        "rope.scaling.factor": ("f32", plan.factor),
        "rope.scaling.original_context_length": ("u32", plan.original_ctx),
    }
    # llama.cpp multiplies cos/sin by attn_factor·(0.1·ln s + 1): write the ratio when it is not the default
    default = get_mscale(plan.factor)
    if plan.attention_factor != default:
        if getattr(arch, "swa_rope_unscaled", False):
            raise UnsupportedError(
                f"YaRN attention factor {plan.attention_factor:g} on {arch.name}: llama.cpp multiplies the sliding "
                "layers by its ratio to the default too, where transformers leaves them unscaled; omit "
                "--attention-factor (default 0.1·ln s + 1) or use --to safetensors/onnx")
        kv["rope.scaling.attn_factor"] = ("f32", plan.attention_factor / default)
    return GgufDeclaration(kv=kv)
