"""Read a transformers config's rotary parameters, whichever schema (4.x legacy keys or 5.x
rope_parameters) wrote it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ropeconv.errors import InputError
from ropeconv.families.lookup import ARCHS, ArchSpec
from ropeconv.families.spec import MIN_CONTEXT, check_legacy_agrees, fixed_layer_thetas, layer_thetas  # noqa: F401 (the readers' names for them)
from ropeconv.positions import RopeScheme

_UNSCALED = {None, "default"}


def rope_dict(config: Mapping[str, Any], arch: ArchSpec | None = None) -> dict[str, Any]:
    """The effective rope dict as transformers 5.x resolves it: rope_scaling wins over rope_parameters. With
    per-layer-type rope (arch.scaled_layer_type), the scaled layer type's: 5.x merges rope_scaling into it."""
    scaling = config.get("rope_scaling")
    params = config.get("rope_parameters")
    if arch is not None and arch.scaled_layer_type and isinstance(params, dict) \
            and any(isinstance(v, dict) for v in params.values()):
        _check_fixed_layers(params, arch)
        scaled = params.get(arch.scaled_layer_type) or {}
        if not isinstance(scaled, dict):
            raise InputError(f"config.json: rope_parameters.{arch.scaled_layer_type} is {type(scaled).__name__}, "
                             "expected an object")
        params = {**scaled, **(scaling or {})}
        scaling = None
    chosen = scaling or params or {}
    if not isinstance(chosen, dict):
        raise InputError(f"config.json: rope_scaling/rope_parameters is {type(chosen).__name__}, expected an object")
    if any(isinstance(v, dict) for v in chosen.values()):
        readers = ", ".join(m for m, a in ARCHS.items() if a.scaled_layer_type)
        raise InputError(f"config.json: per-layer-type rope_parameters are read for {readers} only")
    for key in ("rope_type", "type"):
        if chosen.get(key) is not None and not isinstance(chosen[key], str):
            raise InputError(f"config.json: {key} in rope_scaling/rope_parameters must be a string, "
                             f"got {type(chosen[key]).__name__}")
    return dict(chosen)


def _check_fixed_layers(params: Mapping[str, Any], arch: ArchSpec) -> None:
    for layer_type, _key, _default in arch.fixed_layer_bases:
        own = params.get(layer_type) or {}
        kind = own.get("rope_type", own.get("type", "default")) if isinstance(own, dict) else None
        if kind not in _UNSCALED:
            raise InputError(f"config.json: rope_parameters.{layer_type} is {str(kind)[:40]!r}; ropeconv scales "
                             f"{arch.scaled_layer_type} layers only and needs the {layer_type} layers unscaled "
                             "(rope_type default)")


def head_dim(config: Mapping[str, Any], arch: ArchSpec) -> int:
    explicit = config.get("head_dim")
    if isinstance(explicit, int) and explicit > 0:
        return explicit
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if arch.default_head_dim and not explicit:
        return arch.default_head_dim
    if not isinstance(hidden, int) or not isinstance(heads, int) or heads <= 0:
        raise InputError("config.json: needs hidden_size and num_attention_heads (or head_dim)")
    return hidden // heads


def read_scheme(config: Mapping[str, Any], arch: ArchSpec) -> RopeScheme:
    rope = rope_dict(config, arch)
    for legacy, key in ((arch.theta_key, "rope_theta"), (arch.partial_key, "partial_rotary_factor")):
        check_legacy_agrees(config, legacy, rope, key, "rope_parameters")
    theta = rope.get("rope_theta", config.get(arch.theta_key, config.get("rope_theta", arch.default_theta)))
    partial = rope.get("partial_rotary_factor")
    if partial is None and arch.partial_key:
        partial = config.get(arch.partial_key)
    if partial is None:
        partial = config.get("partial_rotary_factor", arch.default_partial)
    for what, value in (("rope base (rope_theta)", theta), ("rotary fraction", partial)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InputError(f"config.json: {what} must be a number, got {type(value).__name__}")
    theta, partial = float(theta), float(partial)
    if not theta > 1:
        raise InputError(f"config.json: rope base {theta} must be > 1")
    if not 0 < partial <= 1:
        raise InputError(f"config.json: rotary fraction {partial} must be in (0, 1]")
    if partial != 1 and not arch.partial_rotary:
        raise InputError(f"config.json: partial_rotary_factor {partial:g}: transformers' {arch.model_type} rotates the "
                         "whole head whatever the factor says, so the model is ambiguous")
    if arch.scaled_layer_type:
        layer_thetas(config, arch)  # the layer types and their bases, checked before anything is planned
    hd = head_dim(config, arch)
    rotary_dim = int(hd * partial)
    if rotary_dim < 4 or rotary_dim % 2:
        raise InputError(f"config.json: rotary dimension {rotary_dim} must be even and at least 4")

    declared = config.get("max_position_embeddings")
    if not isinstance(declared, int) or declared <= 0:
        raise InputError("config.json: max_position_embeddings must be a positive integer")
    rope_type = rope.get("rope_type", rope.get("type"))
    existing = None if rope_type in _UNSCALED else {k: v for k, v in rope.items() if k != "rope_theta"}
    original = declared
    if existing is not None and rope_type != "dynamic":  # dynamic NTK scales beyond max_position_embeddings
        original = (
            existing.get("original_max_position_embeddings") or config.get("original_max_position_embeddings") or declared
        )
        if not isinstance(original, int) or isinstance(original, bool) or original <= 0:
            raise InputError(f"config.json: original_max_position_embeddings {str(original)[:40]} is not a positive integer")
        if original < MIN_CONTEXT:
            raise InputError(f"config.json: original_max_position_embeddings {original} is below {MIN_CONTEXT} tokens, "
                             "the shortest original context ropeconv takes")
    return RopeScheme(
        theta=theta,
        head_dim=hd,
        rotary_dim=rotary_dim,
        original_ctx=original,
        declared_ctx=declared,
        existing_scaling=existing,
    )


def describe_scaling(scaling: Mapping[str, Any] | None) -> str:
    if not scaling:
        return "none"
    kind = scaling.get("rope_type", scaling.get("type", scaling.get("rule")))
    factor = scaling.get("factor")
    return f"{kind}" + (f" ×{float(factor):g}" if isinstance(factor, (int, float)) else "")
