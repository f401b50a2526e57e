"""OLMo 2: no norm before attention or MLP, RMSNorm after each (post_attention_layernorm,
post_feedforward_layernorm; llama.cpp's attn_post_norm / ffn_post_norm) before its residual add; q and k
RMS-normalized over the whole projection (weights [heads·head_dim]) before the split into heads. llama.cpp's
olmo2 loader takes head_dim as hidden/heads, no output-projection bias and always a separate output matrix."""

from ropeconv.families.parts import (
    COMMON,
    GQA,
    LLAMA_CONFIG,
    LLAMA_DIMS,
    LLAMA_ONNX,
    LLAMA_TENSORS,
    RMS,
    RMS_VALUES,
    TINY_LLAMA,
    L,
    flag,
    norm,
    refuse_attention_bias,
    refuse_head_dim_not_hidden_over_heads,
)
from ropeconv.families.spec import ArchSpec, Family, FamilyShapes, GgufArchSpec, GgufLayout, OnnxLayout, T

FAMILY = Family(
    arch=ArchSpec("olmo2", hf4_two_key_types=frozenset({"linear", "dynamic"}),
                  note="transformers 4.x's Olmo2Config accepts rope_scaling only as {type, factor} of type linear or "
                       "dynamic, so safetensors takes linear, ntk and dynamic and refuses the rest (GGUF and ONNX "
                       "take them); norms after attention and MLP (none before), q and k RMS-normalized over the whole projection "
                       "before rope; GGUF refused with attention_bias, a tied lm_head or head_dim ≠ hidden/heads "
                       "(llama.cpp's olmo2 loads none of them); transformers reads no olmo2 GGUF, so a retrofit is "
                       "proven against the HF checkpoint (verify --base HF_DIR) or refused without --no-verify"),
    shapes=FamilyShapes(
        "olmo2", LLAMA_DIMS,
        tuple(t for t in LLAMA_TENSORS if ".input_layernorm." not in t.name) + (
            T(L + "self_attn.q_norm.weight", "heads*head_dim"), T(L + "self_attn.k_norm.weight", "kv_heads*head_dim"),
            *norm(L + "post_feedforward_layernorm"),
        ),
        GQA,
    ),
    tiny=TINY_LLAMA,
    tiny_norm_range=(0.5, 1.5),
    # post_attention_layernorm is attn_post_norm here (no attn_norm/ffn_norm); q/k norms over the projection
    gguf=GgufLayout("olmo2", "olmo2", COMMON + RMS, ("silu",)),
    gguf_arch=GgufArchSpec("olmo2"),
    gguf_checks=(
        refuse_attention_bias("olmo2"),
        lambda c, d: "tied lm_head: llama.cpp's olmo2 reads a separate output matrix"
        if c.get("tie_word_embeddings") else None,
        refuse_head_dim_not_hidden_over_heads("olmo2"),
    ),
    onnx=OnnxLayout("olmo2", **dict(LLAMA_ONNX, attn_norm=None, mlp_norm=None),
                    post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
                    qk_norm=("self_attn.q_norm", "self_attn.k_norm")),
    values=RMS_VALUES + (flag("attention_bias"),),
    config_defaults=LLAMA_CONFIG + (("rms_norm_eps", 1e-5),),
)
