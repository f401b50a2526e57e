"""Architectures as data: how each family's config names its position parameters.

One row per transformers `model_type`. Nothing here is code that differs per model; the readers
and writers look the keys up.
"""

from __future__ import annotations

from dataclasses import dataclass

from ropeconv.errors import InputError


@dataclass(frozen=True)
class ArchSpec:
    model_type: str
    position: str = "rope"  # the base position scheme
    theta_key: str = "rope_theta"  # legacy (transformers 4.x) top-level key for the rope base
    partial_key: str | None = "partial_rotary_factor"  # legacy top-level key for the rotated fraction
    default_partial: float = 1.0
    default_theta: float = 10000.0
    default_head_dim: int | None = None  # when the config omits head_dim and hidden/heads is not it
    # rope types transformers accepts for this family (None: all of them)
    hf_rope_types: frozenset[str] | None = None
    # Phi-3: transformers 4.x demands rope_scaling == {type, short_factor, long_factor} exactly and
    # reads the original length from a top-level original_max_position_embeddings.
    strict_longrope_legacy: bool = False
    # OLMo 2: transformers 4.x's config accepts rope_scaling only as exactly {type, factor}, of these types
    hf4_two_key_types: frozenset[str] | None = None
    # ALiBi and absolute tables: the config key that states the training length (None: the config states
    # none, BLOOM), the position table tensor and the rows in front of position 0
    ctx_key: str | None = "max_position_embeddings"
    table: str | None = None
    table_offset: int = 0
    note: str = ""  # shown under the capability matrix
    # transformers 4.x: the attention implementation that computes what 5.x computes (None: 4.x's default is exact)
    hf4_attention: str | None = None
    # per-layer-type rope (transformers 5.x rope_parameters keyed by layer type): the one layer type a method
    # scales; every other type keeps its own base, unscaled — (layer type, 4.x config key of its base, default)
    scaled_layer_type: str | None = None
    fixed_layer_bases: tuple[tuple[str, str, float], ...] = ()


ARCHS: dict[str, ArchSpec] = {
    a.model_type: a
    for a in (
        ArchSpec("llama"),
        ArchSpec("mistral"),
        ArchSpec("qwen2"),
        # q/k RMSNorm per head before rope; transformers' Qwen3Config defaults head_dim to 128
        ArchSpec("qwen3", default_head_dim=128,
                 note="q and k RMS-normalized per head before rope (GGUF attn_q_norm/attn_k_norm, computed by the "
                      "ONNX graph); GGUF refused with attention_bias, since llama.cpp's qwen3 has no output-projection "
                      "bias"),
        ArchSpec("olmo2", hf4_two_key_types=frozenset({"linear", "dynamic"}),
                 note="transformers 4.x's Olmo2Config accepts rope_scaling only as {type, factor} of type linear or "
                      "dynamic, so safetensors takes linear, ntk and dynamic and refuses the rest (GGUF and ONNX "
                      "take them); norms after attention and MLP (none before), q and k RMS-normalized over the whole projection "
                      "before rope; GGUF refused with attention_bias, a tied lm_head or head_dim ≠ hidden/heads "
                      "(llama.cpp's olmo2 loads none of them); transformers reads no olmo2 GGUF, so a retrofit is "
                      "proven against the HF checkpoint (verify --base HF_DIR) or refused without --no-verify"),
        ArchSpec("smollm3", default_theta=2000000.0,
                 note="layers listed 0 in no_rope_layers attend without rope (every 4th by default): methods act on "
                      "the others; GGUF refused unless that is exactly every 4th layer (llama.cpp's smollm3 fixes the "
                      "step), or with attention_bias/mlp_bias; transformers reads no smollm3 GGUF, so a retrofit is "
                      "proven against the HF checkpoint (verify --base HF_DIR) or refused without --no-verify"),
        ArchSpec("gemma", default_head_dim=256),
        # 4.x's default sdpa path drops Gemma-2's attention soft-capping (the base's too); its eager path keeps it
        ArchSpec("gemma2", default_head_dim=256, hf4_attention="eager"),
        # --- gemma3 ---
        # Gemma 3's text model: sliding layers keep rope_local_base_freq unscaled, the method acts on full layers
        ArchSpec("gemma3_text", default_head_dim=256, default_theta=1_000_000.0, scaled_layer_type="full_attention",
                 fixed_layer_bases=(("sliding_attention", "rope_local_base_freq", 10_000.0),),
                 note="per-layer-type rope: the method scales the full-attention layers only (5.x "
                      "rope_parameters.full_attention; 4.x rope_theta + rope_scaling), sliding-window layers keep "
                      "their local base unscaled (rope_parameters.sliding_attention; 4.x rope_local_base_freq), as "
                      "Google's 128k configs do; in GGUF the sliding layers are those of "
                      "attention.sliding_window_pattern at rope.freq_base_swa, and refused there are llama3, longrope "
                      "and freqs (llama.cpp's gemma3 reads no rope_freqs), a YaRN attention factor other than the "
                      "default (llama.cpp applies its ratio to the sliding layers too), query_pre_attn_scalar ≠ "
                      "head_dim, attn_logit_softcapping and layer types that are not periodic; the multimodal gemma3 "
                      "config is refused (extend its text model, gemma3_text)"),
        # --- end gemma3 ---
        ArchSpec(
            "phi3",
            hf_rope_types=frozenset({"default", "longrope"}),
            strict_longrope_legacy=True,
            note="transformers accepts only rope_type default or longrope, so safetensors takes ntk, longrope "
            "and freqs and refuses the rest; its config cannot declare an attention factor (transformers "
            "derives sqrt(1 + ln s / ln L)), so another one is refused there (ONNX bakes any method)",
        ),
        ArchSpec("gpt_neox", theta_key="rotary_emb_base", partial_key="rotary_pct", default_partial=0.25,
                 note="partial rotary (rotary_pct): methods act on the rotated dims only"),
        ArchSpec("bloom", position="alibi", ctx_key="seq_length",
                 note="ALiBi; its config states no training length: pass --original-ctx (2048 for BigScience's "
                      "BLOOM) unless config.json has seq_length"),
        ArchSpec("mpt", position="alibi", ctx_key="max_seq_len",
                 note="ALiBi; transformers builds the bias max_seq_len long, so it is raised to the target"),
        ArchSpec("gpt2", position="absolute", ctx_key="n_positions", table="transformer.wpe.weight"),
        ArchSpec("opt", position="absolute", table="model.decoder.embed_positions.weight", table_offset=2,
                 note="position table with 2 unused rows in front (kept as they are)"),
    )
}

# model types that name a known family in another form, and what to pass instead
REFUSED_TYPES = {
    # --- gemma3 ---
    "gemma3": "the multimodal Gemma 3 (vision tower + text_config) is not supported; extend its text model, "
              "model_type gemma3_text (Gemma3ForCausalLM)",
    # --- end gemma3 ---
}


@dataclass(frozen=True)
class GgufArchSpec:
    """What the llama.cpp loader of one GGUF architecture reads (from the vendored sources:
    src/models/<arch>.cpp create_tensor calls and llama_model::get_rope_factors)."""

    name: str  # general.architecture
    reads_rope_freqs: bool = False  # rope_freqs.weight: a per-pair divisor, always on
    # rope_factors_long/short: "always" (read whenever present) or "typed" (only with type longrope)
    longrope: str | None = None
    position: str = "rope"  # "alibi": slopes from max_alibi_bias; "absolute": position_embd rows
    # sliding layers rotate at rope.freq_base_swa with scale 1, but YaRN's attn_factor reaches them too
    swa_rope_unscaled: bool = False


GGUF_ARCHS: dict[str, GgufArchSpec] = {
    a.name: a
    for a in (
        GgufArchSpec("llama", reads_rope_freqs=True, longrope="typed"),
        GgufArchSpec("qwen2"),
        GgufArchSpec("qwen3"),
        GgufArchSpec("phi3", longrope="always"),
        GgufArchSpec("gptneox"),
        GgufArchSpec("olmo2"),
        GgufArchSpec("smollm3"),
        GgufArchSpec("gemma"),
        GgufArchSpec("gemma2"),
        # --- gemma3 ---
        GgufArchSpec("gemma3", swa_rope_unscaled=True),
        # --- end gemma3 ---
        GgufArchSpec("bloom", position="alibi"),
        GgufArchSpec("mpt", position="alibi"),
        GgufArchSpec("gpt2", position="absolute"),
    )
}


def gguf_arch_for(name: str | None) -> GgufArchSpec:
    if not name:
        raise InputError("GGUF has no general.architecture")
    if not isinstance(name, str):
        raise InputError(f"GGUF general.architecture must be a string, got {type(name).__name__}")
    try:
        return GGUF_ARCHS[name]
    except KeyError:
        raise InputError(f"unknown GGUF architecture {name[:40]!r}; supported: {', '.join(sorted(GGUF_ARCHS))}") from None


def arch_for(model_type: str | None) -> ArchSpec:
    if not model_type:
        raise InputError("config.json has no model_type; cannot tell the architecture")
    if not isinstance(model_type, str):
        raise InputError(f"config.json: model_type must be a string, got {type(model_type).__name__}")
    if model_type in REFUSED_TYPES:
        raise InputError(f"model_type {model_type!r}: {REFUSED_TYPES[model_type]}")
    try:
        return ARCHS[model_type]
    except KeyError:
        raise InputError(
            f"unknown architecture {model_type[:40]!r}; supported: {', '.join(sorted(ARCHS))}"
        ) from None
