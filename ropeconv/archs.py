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
    # (4.x key, 5.x key): config keys transformers 5 saves under a new name that 4.x reads only under the old one
    legacy_aliases: tuple[tuple[str, str], ...] = ()
    # transformers 5's yarn/longrope read head_dim as getattr(config, "head_dim", hidden/heads), None where the config
    # class defaults it to None (Mixtral): the output states it
    explicit_head_dim: bool = False


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
        # --- mixtral ---
        ArchSpec("mixtral", default_theta=1000000.0, explicit_head_dim=True,
                 note="mixture of experts (softmax router, top-k renormalized): expert weights byte-copied to "
                      "safetensors (head_dim stated, which 5.x's yarn/longrope/llama3 need); for GGUF, llama.cpp's "
                      "llama with experts, each layer's experts stacked into ffn_*_exps and the router kept float32 "
                      "at every outtype; refused with a sliding window shorter than the target; transformers reads "
                      "no mixtral GGUF, so a retrofit is proven against the HF checkpoint (verify --base HF_DIR) or "
                      "refused without --no-verify; ONNX evaluates every expert and weights it by the scattered "
                      "top-k routing (exact, E× the FFN compute; router unquantized under int4). The test suite "
                      "runs a few methods per format; every exact cell passed once when the family was added"),
        # --- end mixtral ---
        # --- qwen3_moe ---
        ArchSpec("qwen3_moe", legacy_aliases=(("num_experts", "num_local_experts"),),
                 note="qwen3's attention (q/k RMSNorm per head) with a mixture of experts (dense layers from "
                      "mlp_only_layers/decoder_sparse_step kept); safetensors also writes num_experts, which 4.x "
                      "reads; GGUF refused unless norm_topk_prob is true and every layer has experts (llama.cpp's "
                      "qwen3moe always renormalizes the top-k weights and has no dense layers), or with "
                      "attention_bias; ONNX as mixtral's"),
        # --- end qwen3_moe ---
        # --- qwen2_moe ---
        ArchSpec("qwen2_moe",
                 note="qwen2's attention with a mixture of experts beside a shared expert gated by a sigmoid; GGUF "
                      "refused with norm_topk_prob true or dense layers (llama.cpp's qwen2moe never renormalizes "
                      "the top-k weights and gives every layer experts), or head_dim ≠ hidden/heads; ONNX as "
                      "mixtral's"),
        # --- end qwen2_moe ---
        ArchSpec("gemma", default_head_dim=256),
        # 4.x's default sdpa path drops Gemma-2's attention soft-capping (the base's too); its eager path keeps it
        ArchSpec("gemma2", default_head_dim=256, hf4_attention="eager"),
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


@dataclass(frozen=True)
class GgufArchSpec:
    """What the llama.cpp loader of one GGUF architecture reads (from the vendored sources:
    src/models/<arch>.cpp create_tensor calls and llama_model::get_rope_factors)."""

    name: str  # general.architecture
    reads_rope_freqs: bool = False  # rope_freqs.weight: a per-pair divisor, always on
    # rope_factors_long/short: "always" (read whenever present) or "typed" (only with type longrope)
    longrope: str | None = None
    position: str = "rope"  # "alibi": slopes from max_alibi_bias; "absolute": position_embd rows


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
        # --- qwen3_moe ---
        GgufArchSpec("qwen3moe"),
        # --- end qwen3_moe ---
        # --- qwen2_moe ---
        GgufArchSpec("qwen2moe"),
        # --- end qwen2_moe ---
        GgufArchSpec("gemma"),
        GgufArchSpec("gemma2"),
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
    try:
        return ARCHS[model_type]
    except KeyError:
        raise InputError(
            f"unknown architecture {model_type[:40]!r}; supported: {', '.join(sorted(ARCHS))}"
        ) from None
