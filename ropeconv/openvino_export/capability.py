"""What optimum-intel's OpenVINO exporter reads of a config.json, and so which cells the openvino format refuses.
Light: no optimum, openvino or torch (the matrix, `methods` and planning read it).

Facts (optimum-intel 2.2.0, openvino 2026.4.1, with the transformers 5.5.4 it pins; site-packages/optimum):
- exporters/openvino/convert.py traces the transformers model built from config.json, so the rope every static plan
  makes (linear, ntk's theta, yarn with its attention factor, llama3, a longrope carrier) is computed by
  transformers' own modeling_rope_utils and baked into the IR as constants: exactly transformers' reading.
- exporters/openvino/model_patcher.py `_longrope_forward` (OVDecoderModelPatcher, every module whose rope_type is
  longrope) keeps LongRoPE's short/long switch in the graph: torch.where(max(position_ids) + 1 > original, long,
  short), with attention_factor (or long/short_mscale) honoured.
- dynamic NTK is a Python branch in transformers' dynamic_rope_update; the trace runs at a short dummy length, so
  the IR holds the unscaled frequencies (measured: 13.3 in log-probability past the original context, equal to the
  base): refused.
- ALiBi and absolute positions: bloom, mpt, gpt2 and opt are exported by optimum-intel, but their scaled slopes
  (ropeconv_alibi_scaling, read by ropeconv's transformers patch only) or a resampled table are not proven there.
- OpenVINO's CPU plugin keeps the KV cache in u8 by default; parity runs with KV_CACHE_PRECISION f32 (an u8 cache
  measured 0.014 in log-probability on decode steps of a tiny model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# the families ropeconv proves in OpenVINO (transformers model_type): optimum-intel exports each as
# text-generation-with-past, and the tests run every cell the matrix claims for them
PROVEN = ("llama", "mistral", "qwen2", "qwen3", "phi3")
REFUSED_METHODS = {
    "dynamic": "optimum-intel traces the model at a short dummy length, so transformers' dynamic update never runs "
               "and the IR holds the unscaled frequencies (measured 13.3 in log-probability past the original "
               "context); use --method ntk or yarn for a static equivalent",
}


def family_reason(model_type: str, method: str) -> str | None:
    """Why ropeconv does not write the family's cell for OpenVINO (None: it does)."""
    if method in REFUSED_METHODS:
        return REFUSED_METHODS[method]
    if model_type not in PROVEN:
        return f"optimum-intel's export of {model_type} is not proven by ropeconv yet"
    return None


def matrix_note() -> str:
    return (
        f"a HF base ({', '.join(PROVEN)}) is written as a float32 transformers folder and exported by optimum-intel's "
        "own exporter (main_export, text-generation-with-past, stateful, tokenizer converted) into openvino/: the "
        "plan is traced from config.json into the IR as constants, LongRoPE's short/long switch kept in the graph by "
        "optimum-intel's patcher; --ov-weights fp16, or int8 / int4 (--ov-group-size) through optimum-intel's NNCF "
        "weight compression. Needs its own environment (`make openvino`: optimum-intel pins transformers < 5.6). "
        "Parity-proven in OpenVINO 2026.4 through OVModelForCausalLM (f32 inference and KV cache) on tiny random "
        "models, each cell also failing once its scaling is stripped, and on the real SmolLM2 with YaRN ×4. Refused: "
        "dynamic (traced at a short length: unscaled), ALiBi and absolute positions, other families (not proven yet)"
    )


def family_refusal(family: Any, method: Any, sample_plan: Callable[[], Any]) -> str | None:
    """The family must be proven; and optimum-intel traces transformers' model of the folder's config.json, so what
    the transformers folder refuses for the family (phi3's config takes default and longrope only) is refused too."""
    from ropeconv.formats import checkpoint_format

    reason = family_reason(family.model_type, method.NAME)
    if reason is not None:
        return reason
    why = checkpoint_format().family_refusal(family, method, sample_plan)
    return f"optimum-intel traces the transformers model of the folder's config.json, which refuses it: {why}" \
        if why else None
