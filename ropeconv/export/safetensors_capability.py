"""What the capability matrix says of safetensors: its column's note, and which families' cells it refuses (a
rope_type the family's transformers config rejects). Light: no torch, no transformers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def matrix_note() -> str:
    from ropeconv.families import ARCHS

    eager = ", ".join(a.model_type for a in ARCHS.values() if a.hf4_attention == "eager")
    return (
        "config.json reads the same in transformers 5.x (rope_parameters) and 4.x (rope_theta + rope_scaling and the "
        "top-level keys 4.57 reads), and the tokenizer files load in both and in optimum. Parity-proven in both majors "
        "on every cell (tiny random models, 4.x run from a second environment, .venv-tf4: logits identical to 5.x; "
        f"LongRoPE without the top-level original length fails there). In 4.x, {eager} needs "
        "attn_implementation=\"eager\": 4.x's "
        "default sdpa drops its attention soft-capping, for the base as well"
    )


def family_refusal(family: Any, method: Any, sample_plan: Callable[[], Any]) -> str | None:
    """transformers' config class of the family must accept the rope_type the method declares."""
    plan = sample_plan()
    if plan is None:
        return None
    from ropeconv.export.hf_config import rope_type_refusal

    return rope_type_refusal(family.arch, method.NAME, method.hf_rope_parameters(plan)["rope_type"])
