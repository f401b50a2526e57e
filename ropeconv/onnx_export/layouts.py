"""How each HuggingFace decoder family computes its forward pass, as data the graph builder reads.

Facts from transformers 5.23's models/<family>/modeling_<family>.py:
- llama/mistral/qwen2: pre-norm RMSNorm blocks, separate q/k/v projections (qwen2 with biases),
  SwiGLU MLP; mistral and phi3 attend through `sliding_window` on every layer when it is set, qwen2
  and gemma2 on the layers `layer_types` marks "sliding_attention";
- phi3: fused qkv_proj split as [q | k | v] and fused gate_up_proj split as [gate | up];
- gpt_neox: LayerNorm with bias, fused query_key_value laid out per head as [q_h | k_h | v_h],
  partial rotary, plain GELU MLP, parallel residual (`use_parallel_residual`);
- gemma/gemma2: RMSNorm scales by (1 + w), embeddings multiplied by sqrt(hidden), GeGLU MLP;
  gemma2 adds post-attention / pre- and post-feed-forward norms, tanh soft-capping of attention and
  final logits, and scales queries by query_pre_attn_scalar^-1/2.
Biases are not listed: a linear layer has one exactly when its `.bias` tensor is in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from ropeconv.errors import UnsupportedError


@dataclass(frozen=True)
class OnnxLayout:
    model_type: str
    embed: str
    layer: str  # prefix with {i}
    final_norm: str
    lm_head: str
    norm: str  # "rms", "rms_plus_one" (gemma) or "layer" (LayerNorm with bias)
    attn_norm: str
    mlp_norm: str
    qkv: tuple[str, ...]  # (q, k, v) projections, or one fused projection
    qkv_split: str  # "separate", "fused" ([q | k | v]) or "per_head" ([q_h | k_h | v_h] per head)
    o_proj: str
    mlp: tuple[str, ...]  # (gate, up, down), (gate_up, down) or (up, down)
    mlp_kind: str  # "gated", "gated_fused" or "plain"
    activation_key: str = "hidden_act"
    post_attn_norm: str | None = None  # gemma2 sandwich norms
    post_mlp_norm: str | None = None
    parallel_residual_key: str | None = None  # gpt_neox
    embed_scale: bool = False  # gemma: × sqrt(hidden_size)
    query_scalar_key: str | None = None  # gemma2: scores × query_pre_attn_scalar^-1/2 instead of head_dim^-1/2
    softcaps: bool = False  # gemma2: attn_logit_softcapping / final_logit_softcapping
    sliding_all_layers: bool = False  # mistral/phi3: `sliding_window` applies to every layer when set


_LLAMA = dict(
    embed="model.embed_tokens.weight", layer="model.layers.{i}.", final_norm="model.norm", lm_head="lm_head.weight",
    norm="rms", attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), qkv_split="separate",
    o_proj="self_attn.o_proj", mlp=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), mlp_kind="gated",
)
_GEMMA = dict(_LLAMA, norm="rms_plus_one", embed_scale=True)

LAYOUTS: dict[str, OnnxLayout] = {
    layout.model_type: layout
    for layout in (
        OnnxLayout("llama", **_LLAMA),
        OnnxLayout("mistral", **_LLAMA, sliding_all_layers=True),
        OnnxLayout("qwen2", **_LLAMA),
        OnnxLayout("phi3", **dict(_LLAMA, qkv=("self_attn.qkv_proj",), qkv_split="fused",
                                  mlp=("mlp.gate_up_proj", "mlp.down_proj"), mlp_kind="gated_fused"),
                   sliding_all_layers=True),
        OnnxLayout(
            "gpt_neox", embed="gpt_neox.embed_in.weight", layer="gpt_neox.layers.{i}.",
            final_norm="gpt_neox.final_layer_norm", lm_head="embed_out.weight", norm="layer",
            attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
            qkv=("attention.query_key_value",), qkv_split="per_head", o_proj="attention.dense",
            mlp=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"), mlp_kind="plain",
            parallel_residual_key="use_parallel_residual",
        ),
        OnnxLayout("gemma", **_GEMMA),
        OnnxLayout("gemma2", **dict(_GEMMA, mlp_norm="pre_feedforward_layernorm", activation_key="hidden_activation"),
                   post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
                   query_scalar_key="query_pre_attn_scalar", softcaps=True),
    )
}

# transformers' ACT2FN names → the composition the graph uses
ACTIVATIONS = {
    "silu": "silu", "swish": "silu",
    "gelu": "gelu_erf",
    "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
}  # fmt: skip


def onnx_layout_for(model_type: str) -> OnnxLayout:
    try:
        return LAYOUTS[model_type]
    except KeyError:
        raise UnsupportedError(
            f"{model_type} cannot be written as ONNX yet (supported: {', '.join(sorted(LAYOUTS))}); "
            "use --to safetensors"
        ) from None
