"""Qwen3-MoE: qwen3's attention (q and k RMS-normalized per head before rope) with a mixture of experts in place of
the MLP (mlp.gate router, softmax, top k renormalized when norm_topk_prob, experts gate_proj/up_proj/down_proj stored
one module each); layers listed in mlp_only_layers or skipped by decoder_sparse_step keep llama's dense MLP.
transformers 5 saves num_experts as num_local_experts, which 4.x does not read (it would build its default 128
experts): the output states num_experts too. llama.cpp's qwen3moe stacks the experts as mixtral's
(expert_feed_forward_length is moe_intermediate_size), always renormalizes the top-k weights (norm_w true) and gives
every layer experts. The ONNX graph as mixtral's (onnx_export/moe.py). Its config has no layer_types: with
use_sliding_window, transformers masks every layer to sliding_window, as mistral's."""

from ropeconv.families.parts import (
    COMMON,
    GQA,
    LLAMA_CONFIG,
    LLAMA_ONNX,
    LLAMA_TENSORS,
    MOE,
    QWEN_MOE_DIMS,
    QWEN_MOE_EXPERTS,
    QWEN_MOE_ONNX,
    QWEN_MOE_VALUES,
    RMS,
    RMS_VALUES,
    SWITCHED_WINDOW,
    L,
    flag,
    qwen_moe_sparse,
    refuse_attention_bias,
    refuse_dense_layers,
    without_mlp,
)
from ropeconv.families.spec import (
    ArchSpec,
    Family,
    FamilyShapes,
    GgufArchSpec,
    GgufLayout,
    Hparam,
    MoeLayout,
    OnnxLayout,
    T,
    get,
)

FAMILY = Family(
    arch=ArchSpec("qwen3_moe", legacy_aliases=(("num_experts", "num_local_experts"),),
                  note="qwen3's attention (q/k RMSNorm per head) with a mixture of experts (dense layers from "
                       "mlp_only_layers/decoder_sparse_step kept); safetensors also writes num_experts, which 4.x "
                       "reads; GGUF refused unless norm_topk_prob is true and every layer has experts (llama.cpp's "
                       "qwen3moe always renormalizes the top-k weights and has no dense layers), or with "
                       "attention_bias; ONNX as mixtral's"),
    shapes=FamilyShapes(
        "qwen3_moe", QWEN_MOE_DIMS,
        without_mlp(LLAMA_TENSORS) + (T(L + "self_attn.q_norm.weight", "head_dim"),
                                      T(L + "self_attn.k_norm.weight", "head_dim")) + QWEN_MOE_EXPERTS,
        GQA, sparse=qwen_moe_sparse,
    ),
    # head_dim 32 ≠ hidden/heads and norm_topk_prob as Qwen3-30B-A3B's; num_experts as a 4.x config names it
    tiny=dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=48, num_attention_heads=4,
              num_key_value_heads=2, head_dim=32, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True),
    tiny_norm_range=(0.5, 1.5),
    gguf=GgufLayout("qwen3_moe", "qwen3moe", COMMON + RMS + MOE + (
        Hparam("expert_feed_forward_length", "u32", get("moe_intermediate_size")),), ("silu",),
        no_sliding_window=True, always_key_length=True, experts=True),
    gguf_arch=GgufArchSpec("qwen3moe"),
    gguf_checks=(
        refuse_attention_bias("qwen3moe"),
        lambda c, d: None if c.get("norm_topk_prob") else
        "norm_topk_prob false: llama.cpp's qwen3moe always renormalizes the top-k expert weights",
        refuse_dense_layers("qwen3moe"),
    ),
    onnx=OnnxLayout("qwen3_moe", **LLAMA_ONNX, qk_norm=("self_attn.q_norm", "self_attn.k_norm"), qk_norm_per_head=True,
                    sliding_all_layers=True, moe=MoeLayout(**QWEN_MOE_ONNX)),
    test_methods={"safetensors": ("dynamic",), "gguf": ("yarn",), "onnx": ("longrope",)},
    values=RMS_VALUES + QWEN_MOE_VALUES + SWITCHED_WINDOW + (flag("attention_bias"),),
    config_defaults=LLAMA_CONFIG + (
        ("use_sliding_window", False), ("sliding_window", 4096), ("num_experts_per_tok", 8)),
)
