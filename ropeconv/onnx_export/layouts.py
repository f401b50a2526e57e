"""How each HuggingFace decoder family computes its forward pass, as data the graph builder reads: an OnnxLayout
in each family file (ropeconv/families/<model_type>.py); this module holds the lookup and the activations.

Facts from transformers 5.23's models/<family>/modeling_<family>.py:
- llama/mistral/qwen2: pre-norm RMSNorm blocks, separate q/k/v projections (qwen2 with biases),
  SwiGLU MLP; mistral and phi3 attend through `sliding_window` on every layer when it is set, qwen2
  and gemma2 on the layers `layer_types` marks "sliding_attention";
- qwen3: qwen2's blocks (no q/k/v bias by default) with q and k RMS-normalized over each head
  (self_attn.q_norm / k_norm, weights [head_dim]) after the split into heads and before rope;
- olmo2: no norm before attention or MLP, RMSNorm after each (post_attention_layernorm,
  post_feedforward_layernorm) before its residual add; q and k RMS-normalized over the whole projection
  (weights [heads·head_dim]) before the split into heads;
- smollm3: llama's blocks; layers whose entry in no_rope_layers is 0 attend without rope (NoPE);
- phi3: fused qkv_proj split as [q | k | v] and fused gate_up_proj split as [gate | up];
- gpt_neox: LayerNorm with bias, fused query_key_value laid out per head as [q_h | k_h | v_h],
  partial rotary, plain GELU MLP, parallel residual (`use_parallel_residual`);
- gemma/gemma2: RMSNorm scales by (1 + w), embeddings multiplied by sqrt(hidden), GeGLU MLP;
  gemma2 adds post-attention / pre- and post-feed-forward norms, tanh soft-capping of attention and
  final logits, and scales queries by query_pre_attn_scalar^-1/2;
- bloom (ALiBi): word_embeddings_layernorm after the embedding, fused query_key_value per head as
  [q_h | k_h | v_h] (view(…, n_head, 3, head_dim)), a hard-coded tanh GELU with Megatron's constants,
  residuals taken after the norm when apply_residual_connection_post_layernorm;
- mpt (ALiBi): LayerNorms built without bias (`norm_1.bias = None`) and every linear without bias whatever
  `no_bias` says, fused Wqkv as [q | k | v], optional clamp of it (clip_qkv), erf GELU (nn.GELU()),
  softmax_scale from attn_config;
- gpt2 (learned table): Conv1D layers store weights [in, out] (what MatMul reads), fused c_attn as
  [q | k | v], scale_attn_weights / scale_attn_by_inverse_layer_idx;
- opt (learned table, 2 rows in front): queries scaled right after q_proj, pre-norm blocks unless
  do_layer_norm_before is false (350m: norms after each residual add, no final norm), project_in/out
  when word_embed_proj_dim ≠ hidden_size, LayerNorm eps fixed at torch's 1e-5.
Biases are not listed: a linear layer has one exactly when its `.bias` tensor is in the checkpoint
(MPT aside, see linear_bias).
"""

from __future__ import annotations

from ropeconv.errors import UnsupportedError
from ropeconv.families import NO_ONNX, ONNX_LAYOUTS as LAYOUTS
from ropeconv.families.spec import OnnxLayout

__all__ = ["ACTIVATIONS", "FIXED_ACTIVATIONS", "LAYOUTS", "OnnxLayout", "onnx_layout_for"]

# transformers' ACT2FN names → the composition the graph uses
ACTIVATIONS = {
    "silu": "silu", "swish": "silu",
    "gelu": "gelu_erf",
    "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "relu": "relu",
}  # fmt: skip
# hard-coded in a family's MLP (OnnxLayout.fixed_activation), never named by a config
FIXED_ACTIVATIONS = ("gelu_bloom", "gelu_erf")


def onnx_layout_for(model_type: str) -> OnnxLayout:
    if model_type in NO_ONNX:
        raise UnsupportedError(f"{model_type} cannot be written as ONNX: {NO_ONNX[model_type]}")
    try:
        return LAYOUTS[model_type]
    except KeyError:
        raise UnsupportedError(
            f"{model_type} cannot be written as ONNX yet (supported: {', '.join(sorted(LAYOUTS))}); "
            "use --to safetensors"
        ) from None
