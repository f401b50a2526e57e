"""GPT-NeoX: LayerNorm with bias, partial rotary (rotary_pct), plain GELU MLP, parallel residual
(`use_parallel_residual`); transformers stores the fused query_key_value per head as [q_h | k_h | v_h], which
llama.cpp's gptneox splits as all-q, all-k, all-v blocks (the GGUF regroups it)."""

from ropeconv.families.parts import ACTIVATION, COMMON, STANDARD_DIMS, VOCAB, context, eps, flag, linear, norm
from ropeconv.families.spec import (
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
    get,
)

_NEOX = "gpt_neox.layers.{i}."

FAMILY = Family(
    arch=ArchSpec("gpt_neox", theta_key="rotary_emb_base", partial_key="rotary_pct", default_partial=0.25,
                  partial_rotary=True,
                  note="partial rotary (rotary_pct): methods act on the rotated dims only"),
    shapes=FamilyShapes(
        "gpt_neox",
        (*STANDARD_DIMS, ("inter", Dim(("intermediate_size",))), VOCAB),
        (
            T("gpt_neox.embed_in.weight", "vocab, hidden"),
            *norm(_NEOX + "input_layernorm", bias=True),
            *norm(_NEOX + "post_attention_layernorm", bias=True),
            *linear(_NEOX + "attention.query_key_value", "3*hidden", "hidden"),
            *linear(_NEOX + "attention.dense", "hidden", "hidden"),
            *linear(_NEOX + "mlp.dense_h_to_4h", "inter", "hidden"),
            *linear(_NEOX + "mlp.dense_4h_to_h", "hidden", "inter"),
            *norm("gpt_neox.final_layer_norm", bias=True),
            T("embed_out.weight", "vocab, hidden", UNTIED),
        ),
        (("heads", "hidden"),),
    ),
    tiny=dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, rotary_pct=0.25),
    gguf=GgufLayout(
        "gpt_neox", "gptneox",
        COMMON + (
            Hparam("use_parallel_residual", "bool", get("use_parallel_residual", True)),
            Hparam("attention.layer_norm_epsilon", "f32", get("layer_norm_eps", 1e-5)),
        ),
        ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"), qkv_per_head=True,
    ),
    gguf_arch=GgufArchSpec("gptneox"),
    onnx=OnnxLayout(
        "gpt_neox", embed="gpt_neox.embed_in.weight", layer="gpt_neox.layers.{i}.",
        final_norm="gpt_neox.final_layer_norm", lm_head="embed_out.weight", norm="layer", eps_key="layer_norm_eps",
        attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
        qkv=("attention.query_key_value",), qkv_split="per_head", o_proj="attention.dense",
        mlp=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"), mlp_kind="plain",
        parallel_residual_key="use_parallel_residual",
    ),
    # onnxruntime-genai has no gpt_neox model type
    values=(ACTIVATION, eps("layer_norm_eps"), context("max_position_embeddings"), flag("use_parallel_residual"),
            flag("attention_bias")),
    config_defaults=(("hidden_act", "gelu"), ("layer_norm_eps", 1e-5), ("use_parallel_residual", True)),
)
