"""Qwen2-MoE: qwen2's attention with a mixture of experts (as qwen3_moe's; norm_topk_prob false by default, as
Qwen1.5-MoE's) beside a shared expert (mlp.shared_expert) scaled by sigmoid(mlp.shared_expert_gate · x). llama.cpp's
qwen2moe stacks the experts as mixtral's, writes the shared one as ffn_*_shexp (expert_shared_feed_forward_length)
and its [1, hidden] gate as the vector ffn_gate_inp_shexp; its graph never renormalizes the top-k weights (norm_w
false), gives every layer experts, and takes head_dim as hidden/heads. The ONNX graph as mixtral's plus the shared
expert (onnx_export/moe.py)."""

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
    QWEN_WINDOWS,
    RMS,
    RMS_VALUES,
    L,
    qwen_moe_sparse,
    refuse_dense_layers,
    refuse_head_dim_not_hidden_over_heads,
    without_mlp,
)
from ropeconv.families.spec import (
    ArchSpec,
    Dim,
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


def _layer_types(c):
    """Qwen2MoeConfig's derived layer_types: with use_sliding_window, every other layer below max_window_layers."""
    return ["sliding_attention" if (i + 1) % 2 and i < c.max_window_layers and c.use_sliding_window
            else "full_attention" for i in range(c.num_hidden_layers)]


FAMILY = Family(
    arch=ArchSpec("qwen2_moe",
                  note="qwen2's attention with a mixture of experts beside a shared expert gated by a sigmoid; GGUF "
                       "refused with norm_topk_prob true or dense layers (llama.cpp's qwen2moe never renormalizes "
                       "the top-k weights and gives every layer experts), or head_dim ≠ hidden/heads; ONNX as "
                       "mixtral's"),
    shapes=FamilyShapes(
        "qwen2_moe", QWEN_MOE_DIMS + (("shared_inter", Dim(("shared_expert_intermediate_size",))),),
        without_mlp(LLAMA_TENSORS) + QWEN_MOE_EXPERTS + (
            T(L + "mlp.shared_expert.gate_proj.weight", "shared_inter, hidden", layers="sparse"),
            T(L + "mlp.shared_expert.up_proj.weight", "shared_inter, hidden", layers="sparse"),
            T(L + "mlp.shared_expert.down_proj.weight", "hidden, shared_inter", layers="sparse"),
            T(L + "mlp.shared_expert_gate.weight", "1, hidden", layers="sparse"),
        ),
        GQA, sparse=qwen_moe_sparse,
    ),
    # norm_topk_prob false (Qwen1.5-MoE's), a shared expert wider than the routed ones
    tiny=dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=48, shared_expert_intermediate_size=80,
              num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2),
    gguf=GgufLayout("qwen2_moe", "qwen2moe", COMMON + RMS + MOE + (
        Hparam("expert_feed_forward_length", "u32", get("moe_intermediate_size")),
        Hparam("expert_shared_feed_forward_length", "u32", get("shared_expert_intermediate_size"))), ("silu",),
        no_sliding_window=True, experts=True),
    gguf_arch=GgufArchSpec("qwen2moe"),
    gguf_checks=(
        lambda c, d: "norm_topk_prob true: llama.cpp's qwen2moe never renormalizes the top-k expert weights"
        if c.get("norm_topk_prob") else None,
        refuse_dense_layers("qwen2moe"),
        refuse_head_dim_not_hidden_over_heads("qwen2moe"),
    ),
    onnx=OnnxLayout("qwen2_moe", **LLAMA_ONNX, moe=MoeLayout(
        **QWEN_MOE_ONNX, shared_gate="mlp.shared_expert_gate.weight",
        shared=("mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight",
                "mlp.shared_expert.down_proj.weight"))),
    test_methods={"safetensors": ("linear",), "gguf": ("ntk",), "onnx": ("dynamic",)},
    values=RMS_VALUES + QWEN_MOE_VALUES + QWEN_WINDOWS,
    config_defaults=LLAMA_CONFIG + (
        ("use_sliding_window", False), ("sliding_window", 4096), ("max_window_layers", 28),
        ("layer_types", _layer_types), ("num_experts_per_tok", 4)),
)
