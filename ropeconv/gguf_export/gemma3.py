"""Gemma 3's text model in llama.cpp's gemma3 graph (vendored src/models/gemma3.cpp, llama-model.cpp):

- sliding layers are those of attention.sliding_window_pattern (n: layer il slides when il % n < n − 1, which is
  transformers' (i + 1) % n != 0); they rotate at rope.freq_base_swa (default 10000) with freq_scale 1, the other
  layers at rope.freq_base with the method's scale (llama_model::get_rope_freq_base/scale). YaRN's ext_factor and
  attn_factor are global: with scale 1 the ramp leaves a sliding layer's angles alone and its magnitude is
  rope.scaling.attn_factor (1 unless declared), so only the default YaRN attention factor is exact;
- queries are scaled by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 62-layer 27B), where transformers takes
  query_pre_attn_scalar^-1/2; no attention soft-cap; the final soft-cap from final_logit_softcapping;
- q/k RMSNorm per head and the four sandwich norms, all (1 + w) in transformers, stored as 1 + w.
"""

from __future__ import annotations

from typing import Any

Config = dict[str, Any]


def _layer_types(config: Config) -> list[str] | None:
    from ropeconv.archs import ARCHS
    from ropeconv.checkpoint.rope_config import layer_thetas

    thetas = layer_thetas(config, ARCHS["gemma3_text"])
    return None if thetas is None else ["full_attention" if t is None else "sliding_attention" for t in thetas]


def swa_pattern(config: Config) -> int | None:
    """The n with layer il sliding exactly when il % n < n − 1 (None: no such n, or no sliding layer)."""
    types = _layer_types(config)
    if not types or "sliding_attention" not in types:
        return None
    for n in range(1, len(types) + 1):
        if all((t == "sliding_attention") == (il % n < n - 1) for il, t in enumerate(types)):
            return n
    return None


def local_base(config: Config) -> float | None:
    from ropeconv.archs import ARCHS
    from ropeconv.checkpoint.rope_config import fixed_layer_thetas

    return fixed_layer_thetas(config, ARCHS["gemma3_text"]).get("sliding_attention")


def gguf_refusal(config: Config, head_dim: int) -> str | None:
    """What of this config llama.cpp's gemma3 graph would compute differently (None: nothing)."""
    layers, hidden, heads = (config.get(k) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads"))
    scalar = config.get("query_pre_attn_scalar", 256)
    graph_width = hidden // heads if layers == 62 and isinstance(hidden, int) and isinstance(heads, int) else head_dim
    if scalar != graph_width:
        return (f"query_pre_attn_scalar {scalar} ≠ {graph_width}: llama.cpp's gemma3 scales queries by "
                f"1/sqrt({'hidden/heads' if layers == 62 else 'head_dim'})")
    if config.get("attn_logit_softcapping") is not None:
        return "attn_logit_softcapping: llama.cpp's gemma3 has no attention soft-cap"
    if config.get("use_bidirectional_attention"):
        return "use_bidirectional_attention: llama.cpp's gemma3 attends causally"
    types = _layer_types(config) or []
    if "sliding_attention" in types:
        if not isinstance(config.get("sliding_window"), int):
            return "sliding layers but no sliding_window: llama.cpp's gemma3 then rotates every layer at rope.freq_base"
        if swa_pattern(config) is None:
            return ("layer_types that are not every n-th layer full: llama.cpp's gemma3 reads the sliding layers as "
                    "a period (attention.sliding_window_pattern)")
    return None


def fix_transformers_config(src, config) -> None:
    """transformers' reading of a gemma3 GGUF (integrations/ggml.py) maps none of the keys that place and rotate the
    sliding layers, nor the query scale, and takes its config defaults (sliding base 10000, every 6th layer full,
    query_pre_attn_scalar 256): set them to what llama.cpp computes from the same file, so that the reference built
    from the GGUF is the model llama.cpp runs."""
    arch = "gemma3"
    layers = int(config.num_hidden_layers)
    pattern = src.value(f"{arch}.attention.sliding_window_pattern", 6)
    window = src.value(f"{arch}.attention.sliding_window")
    if isinstance(pattern, list):
        sliding = [bool(x) for x in pattern][:layers]
    else:
        sliding = [window is not None and (pattern == 0 or il % pattern < pattern - 1) for il in range(layers)]
    config.layer_types = ["sliding_attention" if s else "full_attention" for s in sliding]
    rope = dict(config.rope_parameters or {})
    rope["sliding_attention"] = {"rope_type": "default",
                                 "rope_theta": float(src.value(f"{arch}.rope.freq_base_swa", 10000.0))}
    config.rope_parameters = rope
    head_dim = int(src.value(f"{arch}.attention.key_length", getattr(config, "head_dim", 256)))
    config.query_pre_attn_scalar = config.hidden_size // config.num_attention_heads if layers == 62 else head_dim
