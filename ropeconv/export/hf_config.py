"""config.json for the extended model, read the same way by transformers 4.x and 5.x.

5.x reads `rope_parameters` but lets a legacy `rope_scaling` win wholesale when both exist; 4.x
reads only `rope_theta` + `rope_scaling`. So both are written with the same content. Each family's
legacy key names come from the architecture table.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from ropeconv.checkpoint.rope_config import fixed_layer_thetas
from ropeconv.errors import UnsupportedError
from ropeconv.families.lookup import ArchSpec
from ropeconv.methods.longrope import default_attention_factor
from ropeconv.positions import LengthRule, PositionPlan, PositionScheme, RopePlan, RopeScheme

_DROP = ("rope_scaling", "rope_parameters", "rope_theta", "partial_rotary_factor", "original_max_position_embeddings")


def with_legacy_rope_keys(config: dict[str, Any], arch: ArchSpec) -> dict[str, Any]:
    """A config transformers 5 saved (rope_parameters only, which 4.x ignores: it falls back to rope_theta 10000 and
    no scaling) with the 4.x keys added, meaning the same. Keys already there are kept."""
    rope = config.get("rope_parameters")
    cfg = _with_aliases(dict(config), arch)
    if not isinstance(rope, dict) or any(isinstance(v, dict) for v in rope.values()):
        return cfg  # none, or per layer type: 4.x has no schema for it
    if "rope_theta" in rope:
        cfg.setdefault(arch.theta_key, rope["rope_theta"])
        cfg.setdefault("rope_theta", rope["rope_theta"])
    if "partial_rotary_factor" in rope:
        cfg.setdefault(arch.partial_key or "partial_rotary_factor", rope["partial_rotary_factor"])
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    cfg.setdefault("rope_scaling", None if rope_type == "default" else {**scaling, "rope_type": rope_type,
                                                                         "type": rope_type})
    return cfg


def declared_ctx(plan: RopePlan) -> int:
    # transformers' dynamic NTK starts scaling beyond max_position_embeddings, so it must stay the original
    return plan.original_ctx if plan.length_rule is LengthRule.DYNAMIC_NTK else plan.target_ctx


def extended_config(
    base: dict[str, Any], arch: ArchSpec, scheme: PositionScheme, plan: PositionPlan, rope: dict[str, Any]
) -> dict[str, Any]:
    """`rope` is the method's transformers declaration (rope_type and its keys; for ALiBi, the
    ropeconv_alibi_scaling record)."""
    if plan.kind == "alibi":
        return _alibi_config(base, arch, plan, rope)
    if plan.kind == "absolute":
        return _absolute_config(base, arch, plan)
    assert scheme.kind == "rope"  # a rotary plan is made from a rotary scheme
    return _rope_config(base, arch, scheme, plan, rope)


def _alibi_config(base: dict[str, Any], arch: ArchSpec, plan: PositionPlan,
                  scaling: dict[str, Any]) -> dict[str, Any]:
    from ropeconv.alibi_patch import KEY

    cfg = copy.deepcopy(base)
    cfg.pop(KEY, None)
    if scaling and plan.factor != 1.0:
        cfg[KEY] = scaling
    key = arch.alibi_bias_len_key
    if key:  # MPT: transformers builds its bias this many keys long; shorter, and longer inputs fail to broadcast
        cfg[key] = max(int(cfg.get(key) or 0), plan.target_ctx)
    return cfg


def _absolute_config(base: dict[str, Any], arch: ArchSpec, plan: PositionPlan) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    cfg[arch.ctx_key or "max_position_embeddings"] = plan.target_ctx
    if "n_ctx" in cfg:  # GPT-2's older configs state the length twice
        cfg["n_ctx"] = plan.target_ctx
    return cfg


def _rope_config(
    base: dict[str, Any], arch: ArchSpec, scheme: RopeScheme, plan: RopePlan, rope: dict[str, Any]
) -> dict[str, Any]:
    rope_type = rope["rope_type"]
    reason = rope_type_refusal(arch, plan.method, rope_type)
    if reason:
        raise UnsupportedError(reason)
    two_keys = arch.hf4_two_key_types
    cfg = copy.deepcopy(base)
    for key in _DROP + (arch.theta_key,) + ((arch.partial_key,) if arch.partial_key else ()):
        cfg.pop(key, None)

    partial = plan.rotary_dim / scheme.head_dim
    params = dict(rope)
    params["rope_theta"] = plan.theta
    cfg["rope_theta"] = plan.theta
    cfg[arch.theta_key] = plan.theta
    if partial != 1.0 or arch.default_partial != 1.0:
        params["partial_rotary_factor"] = partial
        cfg[arch.partial_key or "partial_rotary_factor"] = partial
    cfg["max_position_embeddings"] = declared_ctx(plan)
    if arch.explicit_head_dim and cfg.get("head_dim") is None:
        cfg["head_dim"] = scheme.head_dim

    legacy = None if rope_type == "default" else {"rope_type": rope_type, "type": rope_type, **rope}
    if rope_type == "longrope":
        # 4.x reads LongRoPE's original length only from this top-level key (modeling_rope_utils: without it the
        # short factors apply up to max_position_embeddings, the target); 5.x copies it into the dict, same value
        cfg["original_max_position_embeddings"] = plan.original_ctx
    if arch.strict_longrope_legacy:
        cfg["original_max_position_embeddings"] = plan.original_ctx
        if legacy is not None:
            legacy = _strict_longrope(arch, plan, rope)
    if two_keys is not None and legacy is not None:
        legacy = {"type": rope_type, "factor": float(rope["factor"])}  # exactly the two keys 4.x accepts
    cfg["rope_scaling"] = legacy
    cfg["rope_parameters"] = params
    if arch.scaled_layer_type:
        _per_layer_type(cfg, base, arch)
    return _with_aliases(cfg, arch)


def _with_aliases(cfg: dict[str, Any], arch: ArchSpec) -> dict[str, Any]:
    """The 4.x name of each key 5.x renamed (qwen3_moe's num_experts, saved by 5.x as num_local_experts: without
    it 4.x builds its default 128 experts), with the same value."""
    for old, new in arch.legacy_aliases:
        if old not in cfg and new in cfg:
            cfg[old] = cfg[new]
    return cfg


def _per_layer_type(cfg: dict[str, Any], base: dict[str, Any], arch: ArchSpec) -> None:
    """5.x: rope_parameters keyed by layer type, the method on the scaled type and each other type at its own base,
    unscaled; 4.x: rope_theta + rope_scaling act on the scaled type and each other type's base has its own key."""
    fixed = fixed_layer_thetas(base, arch)
    cfg["rope_parameters"] = {arch.scaled_layer_type: cfg["rope_parameters"],
                              **{t: {"rope_type": "default", "rope_theta": theta} for t, theta in fixed.items()}}
    for layer_type, key, _default in arch.fixed_layer_bases:
        cfg[key] = fixed[layer_type]


def rope_type_refusal(arch: ArchSpec, method: str, rope_type: str) -> str | None:
    """Why a family's config cannot declare this rope_type (None: it can); the capability matrix's per-family
    safetensors cells read it too."""
    if arch.hf_rope_types is not None and rope_type not in arch.hf_rope_types:
        return (f"--method {method} on {arch.model_type}: transformers accepts only rope_type "
                f"{' or '.join(sorted(arch.hf_rope_types))} for this architecture; use --method longrope or freqs")
    two_keys = arch.hf4_two_key_types
    if two_keys is not None and rope_type != "default" and rope_type not in two_keys:
        return (f"--method {method} on {arch.model_type}: transformers 4.x's config accepts rope_scaling only as "
                f"{{type, factor}} of type {' or '.join(sorted(two_keys))}, so a safetensors output would not load "
                "there; use --method linear, ntk or dynamic, or --to gguf/onnx")
    return None


def _strict_longrope(arch: ArchSpec, plan: RopePlan, rope: dict[str, Any]) -> dict[str, Any]:
    # 4.x Phi-3 accepts only these three keys, and 5.x takes rope_scaling over rope_parameters, so
    # the attention factor cannot be declared: both derive sqrt(1 + ln s / ln L) from the lengths.
    derived = default_attention_factor(plan.target_ctx / plan.original_ctx, plan.original_ctx)
    if not math.isclose(plan.attention_factor, derived, rel_tol=1e-12):
        raise UnsupportedError(
            f"{arch.model_type}'s config cannot declare attention factor {plan.attention_factor:g}: transformers "
            f"derives {derived:.10g} from the lengths; pass --attention-factor {derived:.17g} or omit it"
        )
    return {"type": "longrope", "short_factor": rope["short_factor"], "long_factor": rope["long_factor"]}
