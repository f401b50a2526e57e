"""BLOOM (ALiBi): word_embeddings_layernorm after the embedding (llama.cpp's token_embd_norm), fused
query_key_value per head as [q_h | k_h | v_h] (view(…, n_head, 3, head_dim)), bias included, a hard-coded tanh
GELU with Megatron's constants, residuals taken after the norm when apply_residual_connection_post_layernorm.
llama.cpp fixes its slopes at max_alibi_bias 8 and writes no rope keys."""

from ropeconv.families.parts import ALIBI, LAYER_NORM, SHAPE, VOCAB, context, eps, flag, linear, norm, times_hidden
from ropeconv.families.spec import (
    TINY_CTX,
    UNTIED,
    ArchSpec,
    Dim,
    Family,
    FamilyShapes,
    GgufArchSpec,
    GgufLayout,
    Hparam,
    OnnxLayout,
    T,
)

_H = "transformer.h.{i}."

FAMILY = Family(
    arch=ArchSpec("bloom", position="alibi", ctx_key="seq_length",
                  note="ALiBi; its config states no training length: pass --original-ctx (2048 for BigScience's "
                       "BLOOM) unless config.json has seq_length"),
    shapes=FamilyShapes(
        "bloom",
        (("hidden", Dim(("hidden_size", "n_embed"))), ("layers", Dim(("n_layer", "num_hidden_layers"))),
         ("heads", Dim(("n_head", "num_attention_heads"))), VOCAB),
        (
            T("transformer.word_embeddings.weight", "vocab, hidden"),
            *norm("transformer.word_embeddings_layernorm", bias=True),
            *norm(_H + "input_layernorm", bias=True),
            *linear(_H + "self_attention.query_key_value", "3*hidden", "hidden"),
            *linear(_H + "self_attention.dense", "hidden", "hidden"),
            *norm(_H + "post_attention_layernorm", bias=True),
            *linear(_H + "mlp.dense_h_to_4h", "4*hidden", "hidden"),
            *linear(_H + "mlp.dense_4h_to_h", "hidden", "4*hidden"),
            *norm("transformer.ln_f", bias=True),
            T("lm_head.weight", "vocab, hidden", UNTIED),
        ),
        (("heads", "hidden"),), tied_default=True, optional_prefix="transformer.",
    ),
    # 6 heads: not a power of two, so the interleaved slope order is exercised
    tiny=dict(hidden_size=96, n_head=6, seq_length=TINY_CTX),
    # llama.cpp computes GELU with the tanh approximation; bloom_gelu and gelu_new are that formula
    gguf=GgufLayout("bloom", "bloom", SHAPE + (Hparam("feed_forward_length", "u32", times_hidden(4)),)
                    + LAYER_NORM + ALIBI, ("gelu",), qkv_per_head=True),
    gguf_arch=GgufArchSpec("bloom", position="alibi"),
    gguf_checks=(
        lambda c, d: "apply_residual_connection_post_layernorm: llama.cpp's bloom adds the residual before the norm"
        if c.get("apply_residual_connection_post_layernorm") else None,
    ),
    onnx=OnnxLayout(
        "bloom", embed="transformer.word_embeddings.weight", layer="transformer.h.{i}.",
        final_norm="transformer.ln_f", lm_head="lm_head.weight", norm="layer",
        attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
        qkv=("self_attention.query_key_value",), qkv_split="per_head", o_proj="self_attention.dense",
        mlp=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"), mlp_kind="plain", eps_key="layer_norm_epsilon",
        alibi_keys="mask", embed_norm="transformer.word_embeddings_layernorm",
        fixed_activation="gelu_bloom", residual_norm_key="apply_residual_connection_post_layernorm",
        optional_prefix="transformer.",
    ),
    values=(eps("layer_norm_epsilon"), context("seq_length", null=True),
            flag("apply_residual_connection_post_layernorm")),
    config_defaults=(("layer_norm_epsilon", 1e-5), ("apply_residual_connection_post_layernorm", False)),
)
