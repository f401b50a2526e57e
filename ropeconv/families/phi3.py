"""Phi-3: fused qkv_proj split as [q | k | v] and fused gate_up_proj split as [gate | up]; `sliding_window` on
every layer when set. llama.cpp's phi3 loader reads the LongRoPE factor tensors whenever they are present."""

from ropeconv.families.parts import (
    COMMON,
    GQA,
    LLAMA_CONFIG,
    LLAMA_DIMS,
    LLAMA_ONNX,
    RMS,
    RMS_VALUES,
    SLIDING_WINDOW,
    TINY_LLAMA,
    L,
    context,
    linear,
    norm,
)
from ropeconv.families.spec import (
    TINY_CTX,
    UNTIED,
    ArchSpec,
    Family,
    FamilyShapes,
    GgufArchSpec,
    GgufLayout,
    OnnxLayout,
    T,
)

FAMILY = Family(
    arch=ArchSpec(
        "phi3",
        hf_rope_types=frozenset({"default", "longrope"}),
        strict_longrope_legacy=True,
        partial_rotary=True,
        note="transformers accepts only rope_type default or longrope, so safetensors takes ntk, longrope "
        "and freqs and refuses the rest; its config cannot declare an attention factor (transformers "
        "derives sqrt(1 + ln s / ln L)), so another one is refused there (ONNX bakes any method)",
    ),
    shapes=FamilyShapes(
        "phi3", LLAMA_DIMS,
        (
            T("model.embed_tokens.weight", "vocab, hidden"),
            *linear(L + "self_attn.qkv_proj", "(heads + 2*kv_heads)*head_dim", "hidden"),
            *linear(L + "self_attn.o_proj", "hidden", "heads*head_dim"),
            *linear(L + "mlp.gate_up_proj", "2*inter", "hidden"),
            *linear(L + "mlp.down_proj", "hidden", "inter"),
            *norm(L + "input_layernorm"),
            *norm(L + "post_attention_layernorm"),
            *norm("model.norm"),
            T("lm_head.weight", "vocab, hidden", UNTIED),
        ),
        GQA,
    ),
    tiny=dict(TINY_LLAMA, original_max_position_embeddings=TINY_CTX, pad_token_id=0),
    gguf=GgufLayout("phi3", "phi3", COMMON + RMS, ("silu",), no_sliding_window=True),
    gguf_arch=GgufArchSpec("phi3", longrope="always"),
    onnx=OnnxLayout("phi3", **dict(LLAMA_ONNX, qkv=("self_attn.qkv_proj",), qkv_split="fused",
                                   mlp=("mlp.gate_up_proj", "mlp.down_proj"), mlp_kind="gated_fused"),
                    sliding_all_layers=True),
    genai_type="phi3",
    values=RMS_VALUES + (context("original_max_position_embeddings"), SLIDING_WINDOW),
    config_defaults=LLAMA_CONFIG + (("rms_norm_eps", 1e-5),),
)
