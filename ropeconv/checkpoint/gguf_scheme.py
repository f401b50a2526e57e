"""A GGUF file's rotary embedding as a RopeScheme, from llama.cpp's own metadata keys."""

from __future__ import annotations

import math
from typing import Any

from ropeconv.errors import InputError
from ropeconv.families.lookup import GgufArchSpec, gguf_arch_for
from ropeconv.families.spec import MIN_CONTEXT
from ropeconv.gguf_io.reader import GgufFile, scalar
from ropeconv.positions import RopeScheme
from ropeconv.provenance.gguf import recorded_plan_json

# tensors that carry a rope extension in llama.cpp
CARRIER_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


def gguf_arch(src: GgufFile) -> GgufArchSpec:
    return gguf_arch_for(src.value("general.architecture"))


def existing_scaling(src: GgufFile, arch: GgufArchSpec) -> dict[str, Any] | None:
    prefix = f"{arch.name}.rope.scaling."
    found: dict[str, Any] = {}
    for f in src.fields:
        if not f.key.startswith(prefix):
            continue
        value = scalar(src, f.key)  # llama.cpp reads each as one number or one type name
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{src.path}: {f.key} = {value} is not a finite number")
        found[f.key[len(prefix):]] = value
    kind = found.get("type")
    if kind is not None and not isinstance(kind, str):
        raise InputError(f"{src.path}: {prefix}type must be a string, got {type(kind).__name__}")
    carriers = [t.name for t in src.tensors if t.name in CARRIER_TENSORS]
    factor = found.get("factor")
    scaled = (kind not in (None, "none")) or (factor not in (None, 0, 0.0, 1, 1.0)) or carriers
    if not scaled:
        return None
    out = {"rope_type": kind or ("tensor factors" if carriers else "scaled"), **found}
    if carriers:
        out["tensors"] = carriers
    return out


def read_gguf_scheme(src: GgufFile) -> RopeScheme:
    arch = gguf_arch(src)
    a = arch.name

    def positive_int(key: str, default: Any = None) -> int:
        value = scalar(src, key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InputError(f"{src.path}: {key} = {str(value)[:40]} is not a positive integer")
        return value

    check_epsilons(src)
    embd = positive_int(f"{a}.embedding_length")
    heads = positive_int(f"{a}.attention.head_count")
    head_dim = positive_int(f"{a}.attention.key_length", embd // heads)
    rotary_dim = positive_int(f"{a}.rope.dimension_count", head_dim)
    context = positive_int(f"{a}.context_length")
    theta = scalar(src, f"{a}.rope.freq_base", 10000.0)
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or not 1 < theta < math.inf:
        raise InputError(f"{src.path}: {a}.rope.freq_base = {str(theta)[:40]} must be a finite number > 1")
    if rotary_dim % 2 or rotary_dim < 4 or rotary_dim > head_dim:
        raise InputError(f"{src.path}: rope dimension count {rotary_dim} must be even, ≥ 4 and ≤ head dim {head_dim}")
    existing = existing_scaling(src, arch)
    original = context
    if existing is not None:
        recorded = _recorded_plan(src)  # a ropeconv GGUF knows the unscaled base and length it started from
        if recorded:
            theta, original = recorded["theta"], recorded["original_ctx"]
        elif existing.get("original_context_length"):
            original = positive_int(f"{a}.rope.scaling.original_context_length")
        else:
            # e.g. Llama-3.1 GGUFs: rope_freqs and the extended context only; the original is not in the file
            existing = {**existing, "original_unknown": True}
    if original < MIN_CONTEXT:
        raise InputError(f"{src.path}: original context {original} is below {MIN_CONTEXT} tokens, the shortest "
                         "ropeconv takes (its shortest probe; below 2π YaRN's correction range turns negative)")
    return RopeScheme(
        theta=float(theta),
        head_dim=head_dim,
        rotary_dim=rotary_dim,
        original_ctx=int(original),
        declared_ctx=context,
        existing_scaling=existing,
    )


def check_epsilons(src: GgufFile) -> None:
    """A norm epsilon llama.cpp's loader takes and its graph aborts on (GGML_ASSERT(eps >= 0.0f), exit 134), or one
    that divides a zero row by zero: each must be a finite number > 0 (families/parts.eps, for config.json). Checked
    for a GGUF base and, by the llama.cpp runtime, for every GGUF before llama.cpp loads it (verify, eval)."""
    arch_name = src.arch
    for key in (f"{arch_name}.attention.layer_norm_rms_epsilon", f"{arch_name}.attention.layer_norm_epsilon"):
        value = scalar(src, key)
        if value is not None and (not isinstance(value, float) or not 0 < value < math.inf):
            raise InputError(f"{src.path}: {key} = {str(value)[:40]} must be a finite number > 0 (llama.cpp asserts "
                             "eps ≥ 0: the process aborts)")


def _recorded_plan(src: GgufFile) -> dict[str, Any] | None:
    """The unscaled base and length a ropeconv GGUF started from; None when it records none readable."""
    try:
        plan = recorded_plan_json(src)
        if plan is None:
            return None
        # ntk and dynamic --bake-at record the raised base as theta and the unscaled one as base_theta
        theta = float((plan.get("params") or {}).get("base_theta", plan["theta"]))
        original = int(plan["original_ctx"])
    except (InputError, ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return None
    return {"theta": theta, "original_ctx": original} if 1 < theta < math.inf and original > 0 else None
