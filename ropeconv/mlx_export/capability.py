"""What mlx-lm reads of a config.json, and so which cells the mlx format refuses: the families whose mlx-lm model
reads the plan (from `rope_scaling`, through mlx_lm/models/rope_utils.py's initialize_rope) and the rope_scaling keys
each rope type's mlx-lm class reads. Light: no mlx (the matrix, `methods` and planning read it).

Facts (mlx-lm 0.32.2, site-packages/mlx_lm/models): llama.py (mistral is mapped to it), qwen2.py and qwen3.py build
their rope with initialize_rope(head_dim, rope_theta, traditional, rope_scaling, max_position_embeddings), which
takes `rope_scaling["type"]`, else `["rope_type"]` (legacy key first; qwen3 falls back to rope_parameters only when
rope_scaling is absent): linear → nn.RoPE(scale=1/factor); dynamic → DynamicNTKScalingRoPE (the base from
max(offset + length, max_position_embeddings), per call, as transformers); llama3 → Llama3RoPE; yarn → YarnRoPE
(factor, original_max_position_embeddings, beta_fast, beta_slow, mscale, mscale_all_dim; always truncated, no
attention_factor); longrope → SuScaledRoPE with the long factors only and its own scale. gemma.py, gemma2.py,
gpt_neox.py, mixtral.py, qwen3_moe.py build a plain nn.RoPE (no scaling read); phi3.py and qwen2_moe.py read
their own subset; bloom, mpt and opt have no mlx-lm model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# the families ropeconv proves in mlx-lm, by transformers model_type → mlx-lm's model module
READS_SCALING = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
# mlx-lm models that build a plain nn.RoPE from rope_theta and read no scaling at all
PLAIN_ROPE = {"gemma", "gemma2", "gpt_neox", "mixtral", "qwen3_moe"}
NO_MODEL = {"bloom", "mpt", "opt"}
# rope_scaling keys each rope type's mlx-lm class reads (rope_type / type / rope_theta besides)
READ_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"},
}
ALWAYS = {"rope_type", "type", "rope_theta"}


def family_reason(model_type: str, method: str) -> str | None:
    """Why mlx-lm would not run the family's cell as transformers does (None: it does)."""
    if model_type in READS_SCALING:
        return None
    if model_type in NO_MODEL:
        return f"mlx-lm has no {model_type} model"
    if model_type in PLAIN_ROPE:
        if method == "none":
            return f"mlx-lm's {model_type} model is not proven by ropeconv yet"
        return f"mlx-lm's {model_type} model builds a plain nn.RoPE and reads no rope scaling"
    if model_type == "phi3":
        return ("mlx-lm's phi3 model reads rope_scaling only with a legacy `type` of longrope, su or linear and the "
                "original length from the top level; not proven by ropeconv")
    return f"mlx-lm's {model_type} model is not proven by ropeconv yet"


def _mlx_yarn_mscale(factor: float, scaling: dict[str, Any]) -> float:
    """YarnRoPE's attention scale (mlx_lm/models/rope_utils.py): get_mscale(factor, mscale) / get_mscale(factor,
    mscale_all_dim), defaults 1 and 0."""
    def get(scale: float, m: float) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    return get(factor, float(scaling.get("mscale", 1))) / get(factor, float(scaling.get("mscale_all_dim", 0)))


def scaling_reason(scaling: dict[str, Any] | None, plan: Any) -> str | None:
    """Why mlx-lm would read the rope_scaling ropeconv writes other than transformers does (None: it reads it all)."""
    if not scaling:
        return None
    rope_type = scaling.get("type") or scaling.get("rope_type") or "default"  # mlx-lm's order: legacy key first
    if rope_type != (scaling.get("rope_type") or rope_type):
        return f"rope_scaling's legacy type {rope_type!r} differs from its rope_type {scaling.get('rope_type')!r}"
    if rope_type not in READ_KEYS:
        why = {"longrope": "mlx-lm's SuScaledRoPE builds the long factors only (wrong below the original length, "
                           "where transformers uses the short ones) and ignores attention_factor"}
        if rope_type == "longrope" and scaling.get("short_factor") == scaling.get("long_factor"):
            return ("a longrope carrier: mlx-lm's SuScaledRoPE ignores attention_factor and applies its own scale, "
                    "sqrt(1 + ln(max_position_embeddings / original) / ln(original))")
        return why.get(rope_type, f"mlx-lm has no rope type {rope_type!r}")
    unread = sorted(set(scaling) - READ_KEYS[rope_type] - ALWAYS - {"attention_factor", "truncate"})
    if unread:
        return f"mlx-lm's {rope_type} rope does not read {', '.join(unread)}"
    if rope_type == "yarn":
        if scaling.get("truncate", True) is False:
            return "yarn with truncate off: mlx-lm's YarnRoPE always rounds the correction range (floor/ceil)"
        applied = _mlx_yarn_mscale(float(scaling["factor"]), scaling)
        wanted = float(getattr(plan, "attention_factor", applied))
        if not math.isclose(applied, wanted, rel_tol=1e-9):
            return (f"yarn with attention factor {wanted:g}: mlx-lm's YarnRoPE ignores attention_factor and would "
                    f"apply {applied:.4f}")
    return None


def matrix_note() -> str:
    proven = ", ".join(sorted(READS_SCALING))
    return (
        f"a HF base ({proven}) is written as a float32 transformers folder and converted by mlx-lm's own "
        "`mlx_lm.convert` into mlx/ (--mlx-dtype float32/float16/bfloat16, --mlx-bits 4/8 with --mlx-group-size "
        "by mlx-lm's quantizer), the plan declared in config.json's rope_scaling, which is what mlx-lm reads. "
        "Parity-proven in mlx-lm 0.32 (mlx on the CPU) through its KV cache on tiny random models, each cell also "
        "failing once its rope_scaling is stripped, and on the real SmolLM2 with YaRN ×4. Refused: LongRoPE (mlx-lm "
        "builds the long factors only), YaRN with a non-default attention factor or truncate off, families whose "
        f"mlx-lm model reads no scaling ({', '.join(sorted(PLAIN_ROPE))}) or that "
        "mlx-lm lacks"
    )


def family_refusal(family: Any, method: Any, sample_plan: Callable[[], Any]) -> str | None:
    """The family's mlx-lm model must read the plan; the sample plan's rope_scaling must be read in full."""
    reason = family_reason(family.model_type, method.NAME)
    if reason is not None:
        return reason
    plan = sample_plan()
    if plan is None:
        return None
    return scaling_reason(method.hf_rope_parameters(plan), plan)
