"""Gemma 3's text model (Gemma3ForCausalLM): gemma2's blocks (sandwich norms, GeGLU, × sqrt(hidden) embedding, all
norms (1 + w)) plus q/k RMSNorm per head ([head_dim]) before rope, no attention soft-cap, and per-layer-type rope:
the layers `layer_types` marks "sliding_attention" rotate at their own local base (5.x
rope_parameters.sliding_attention; 4.x rope_local_base_freq, default 10000), unscaled, and a method scales only the
"full_attention" layers (rope_parameters.full_attention; 4.x rope_theta + rope_scaling), as Google's 128k configs do.

llama.cpp's gemma3 graph (vendored src/models/gemma3.cpp, llama-model.cpp):
- sliding layers are those of attention.sliding_window_pattern (n: layer il slides when il % n < n − 1, which is
  transformers' (i + 1) % n != 0); they rotate at rope.freq_base_swa with freq_scale 1, the other layers at
  rope.freq_base with the method's scale (llama_model::get_rope_freq_base/scale). YaRN's ext_factor and attn_factor
  are global: with scale 1 the ramp leaves a sliding layer's angles alone and its magnitude is rope.scaling.attn_factor
  (1 unless declared), so only the default YaRN attention factor is exact (GgufArchSpec.swa_rope_unscaled);
- it reads no rope_freqs and no LongRoPE tensors (llama3, freqs and longrope are refused by the matrix's own rules);
- queries are scaled by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 62-layer 27B), where transformers takes
  query_pre_attn_scalar^-1/2; no attention soft-cap; the final soft-cap from final_logit_softcapping.
A foreign gemma3 GGUF's reference is fixed up by gguf_export/gemma3.py (transformers' GGUF reader maps none of the
keys above).
"""

from ropeconv.families.parts import (
    COMMON,
    GEMMA2_VALUES,
    GEMMA_ONNX,
    GQA,
    LLAMA_DIMS,
    LLAMA_TENSORS,
    RMS,
    TINY_LLAMA,
    L,
    norm,
    with_head_dim_default,
)
from ropeconv.families.spec import (
    INT,
    ArchSpec,
    Config,
    Family,
    FamilyShapes,
    GgufArchSpec,
    GgufLayout,
    Hparam,
    OnnxLayout,
    T,
    Value,
    fixed_layer_thetas,
    get,
    layer_thetas,
    pattern_layer_types,
)

ARCH = ArchSpec(
    "gemma3_text", default_head_dim=256, default_theta=1_000_000.0, scaled_layer_type="full_attention",
    fixed_layer_bases=(("sliding_attention", "rope_local_base_freq", 10_000.0),),
    note="per-layer-type rope: the method scales the full-attention layers only (5.x "
         "rope_parameters.full_attention; 4.x rope_theta + rope_scaling), sliding-window layers keep "
         "their local base unscaled (rope_parameters.sliding_attention; 4.x rope_local_base_freq), as "
         "Google's 128k configs do; in GGUF the sliding layers are those of "
         "attention.sliding_window_pattern at rope.freq_base_swa, and refused there are llama3, longrope "
         "and freqs (llama.cpp's gemma3 reads no rope_freqs), a YaRN attention factor other than the "
         "default (llama.cpp applies its ratio to the sliding layers too), query_pre_attn_scalar ≠ "
         "head_dim, attn_logit_softcapping and layer types that are not periodic; the multimodal gemma3 "
         "config is refused (extend its text model, gemma3_text)",
)


def _layer_types(config: Config) -> list[str] | None:
    thetas = layer_thetas(config, ARCH)
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


def sliding_window(config: Config) -> int | None:
    """attention.sliding_window, only where a layer slides: llama.cpp's gemma3 loader reads a window as sliding layers
    in its default pattern (5 of every 6) when the file states no attention.sliding_window_pattern."""
    return config.get("sliding_window") if swa_pattern(config) is not None else None


def local_base(config: Config) -> float | None:
    return fixed_layer_thetas(config, ARCH).get("sliding_attention")


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


# Gemma3TextConfig's defaults; it derives layer_types from older configs' sliding_window_pattern (every n-th layer
# full)
_CONFIG = (
    ("hidden_activation", "gelu_pytorch_tanh"), ("rms_norm_eps", 1e-6), ("query_pre_attn_scalar", 256),
    ("sliding_window", 4096), ("sliding_window_pattern", 6),
    ("layer_types", lambda c: pattern_layer_types(c.num_hidden_layers, c.sliding_window_pattern)),
)


FAMILY = Family(
    arch=ARCH,
    # gemma2's sandwich norms plus q/k RMSNorm per head ([head_dim])
    shapes=FamilyShapes(
        "gemma3_text", with_head_dim_default(LLAMA_DIMS, "256"),
        LLAMA_TENSORS + norm(L + "pre_feedforward_layernorm") + norm(L + "post_feedforward_layernorm")
        + (T(L + "self_attn.q_norm.weight", "head_dim"), T(L + "self_attn.k_norm.weight", "head_dim")),
        GQA, tied_default=True,
    ),
    # one sliding layer (window 32, inside the probe; its own base 500) and one full layer (base 10000): the method
    # acts on the second only
    tiny=dict(TINY_LLAMA, head_dim=16, query_pre_attn_scalar=16, sliding_window=32, rope_theta=10000.0,
              rope_local_base_freq=500.0, layer_types=["sliding_attention", "full_attention"]),
    # q/k norms and sandwich norms of its own; Gemma's norms scale by (1 + w): w in ±0.5 is the others' 0.5–1.5 scale
    tiny_norm_range=(-0.5, 0.5),
    refused_types={"gemma3": "the multimodal Gemma 3 (vision tower + text_config) is not supported; extend its text "
                             "model, model_type gemma3_text (Gemma3ForCausalLM)"},
    # sliding layers at rope.freq_base_swa with scale 1, the others at rope.freq_base with the method
    gguf=GgufLayout(
        "gemma3_text", "gemma3",
        COMMON + RMS + (
            Hparam("final_logit_softcapping", "f32", get("final_logit_softcapping")),
            Hparam("attention.sliding_window", "u32", sliding_window),
            Hparam("attention.sliding_window_pattern", "u32", swa_pattern),
            Hparam("rope.freq_base_swa", "f32", local_base),
        ),
        ("gelu_pytorch_tanh",), norm_plus_one=True, always_key_length=True,
    ),
    gguf_arch=GgufArchSpec("gemma3", swa_rope_unscaled=True,
                           transformers_fixup="ropeconv.gguf_export.gemma3:fix_transformers_config"),
    gguf_checks=(gguf_refusal,),
    # gemma2's blocks with q/k RMSNorm (1 + w) per head; per-layer-type rope (DecoderDims.layer_thetas)
    onnx=OnnxLayout("gemma3_text", **dict(GEMMA_ONNX, mlp_norm="pre_feedforward_layernorm",
                                          activation_key="hidden_activation"),
                    post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
                    query_scalar_key="query_pre_attn_scalar", softcaps=True,
                    qk_norm=("self_attn.q_norm", "self_attn.k_norm"), qk_norm_per_head=True),
    genai_type="gemma3_text",
    values=GEMMA2_VALUES + (
        Value("sliding_window_pattern", INT, least=1, why="every sliding_window_pattern-th layer is full"),),
    config_defaults=_CONFIG,
)
