"""How each HuggingFace decoder family computes its forward pass, as data the graph builder reads.

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

from dataclasses import dataclass

from ropeconv.errors import UnsupportedError


@dataclass(frozen=True)
class OnnxLayout:
    model_type: str
    embed: str
    layer: str  # prefix with {i}
    final_norm: str
    lm_head: str
    norm: str  # "rms", "rms_plus_one" (gemma), "layer" (LayerNorm with bias) or "layer_no_bias" (mpt)
    attn_norm: str | None  # None: no norm before attention (olmo2)
    mlp_norm: str | None
    qkv: tuple[str, ...]  # (q, k, v) projections, or one fused projection
    qkv_split: str  # "separate", "fused" ([q | k | v]) or "per_head" ([q_h | k_h | v_h] per head)
    o_proj: str
    mlp: tuple[str, ...]  # (gate, up, down), (gate_up, down) or (up, down)
    mlp_kind: str  # "gated", "gated_fused" or "plain"
    activation_key: str = "hidden_act"
    # q/k RMSNorm before rope: (q norm, k norm), over each head (qwen3, weights [head_dim]) or over the whole
    # projection before it is split into heads (olmo2, weights [heads·head_dim])
    qk_norm: tuple[str, str] | None = None
    qk_norm_per_head: bool = False
    rope_layers_key: str | None = None  # smollm3: config list, 1 where a layer rotates q/k, 0 where it does not
    post_attn_norm: str | None = None  # gemma2 sandwich norms
    post_mlp_norm: str | None = None
    parallel_residual_key: str | None = None  # gpt_neox
    embed_scale: bool = False  # gemma: × sqrt(hidden_size)
    query_scalar_key: str | None = None  # gemma2: scores × query_pre_attn_scalar^-1/2 instead of head_dim^-1/2
    softcaps: bool = False  # gemma2: attn_logit_softcapping / final_logit_softcapping
    sliding_all_layers: bool = False  # mistral/phi3: `sliding_window` applies to every layer when set
    # ALiBi and learned tables ------------------------------------------------------------------
    position: str = "rope"  # "rope", "alibi" or "absolute" (archs.ArchSpec.position)
    # ALiBi key positions: "mask" ((cumsum(attention_mask) − 1)·mask, BLOOM) or "cache" (j − (t − 1) over the
    # t keys in view, padding included, MPT); softmax is shift-invariant per row, both give −m·(i − j)
    alibi_keys: str | None = None
    embed_norm: str | None = None  # bloom: word_embeddings_layernorm
    fixed_activation: str | None = None  # a value of ACTIVATIONS, for MLPs that hard-code theirs
    eps_key: str | None = None  # config key of the norm epsilon; None: torch's LayerNorm default 1e-5 (OPT)
    conv1d: bool = False  # gpt2: weights stored [in, out], read without a transpose
    linear_bias: bool = True  # mpt: transformers builds every linear without bias
    query_prescaled: bool = False  # opt: q_proj(x)·scale, then scores unscaled (its rounding order)
    post_norm_key: str | None = None  # opt: do_layer_norm_before (false: norm after each residual add)
    residual_norm_key: str | None = None  # bloom: apply_residual_connection_post_layernorm
    project: tuple[str, str] | None = None  # opt: (project_in, project_out), when word_embed_proj_dim ≠ hidden
    optional_prefix: str | None = None  # checkpoints saved from the bare model lack it ("transformer.", "model.")


_LLAMA = dict(
    embed="model.embed_tokens.weight", layer="model.layers.{i}.", final_norm="model.norm", lm_head="lm_head.weight",
    norm="rms", eps_key="rms_norm_eps", attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
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
        OnnxLayout("qwen3", **_LLAMA, qk_norm=("self_attn.q_norm", "self_attn.k_norm"), qk_norm_per_head=True),
        OnnxLayout("phi3", **dict(_LLAMA, qkv=("self_attn.qkv_proj",), qkv_split="fused",
                                  mlp=("mlp.gate_up_proj", "mlp.down_proj"), mlp_kind="gated_fused"),
                   sliding_all_layers=True),
        OnnxLayout(
            "gpt_neox", embed="gpt_neox.embed_in.weight", layer="gpt_neox.layers.{i}.",
            final_norm="gpt_neox.final_layer_norm", lm_head="embed_out.weight", norm="layer", eps_key="layer_norm_eps",
            attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
            qkv=("attention.query_key_value",), qkv_split="per_head", o_proj="attention.dense",
            mlp=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"), mlp_kind="plain",
            parallel_residual_key="use_parallel_residual",
        ),
        OnnxLayout(
            "bloom", embed="transformer.word_embeddings.weight", layer="transformer.h.{i}.",
            final_norm="transformer.ln_f", lm_head="lm_head.weight", norm="layer",
            attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
            qkv=("self_attention.query_key_value",), qkv_split="per_head", o_proj="self_attention.dense",
            mlp=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"), mlp_kind="plain", eps_key="layer_norm_epsilon",
            position="alibi", alibi_keys="mask", embed_norm="transformer.word_embeddings_layernorm",
            fixed_activation="gelu_bloom", residual_norm_key="apply_residual_connection_post_layernorm",
            optional_prefix="transformer.",
        ),
        OnnxLayout(
            "mpt", embed="transformer.wte.weight", layer="transformer.blocks.{i}.", final_norm="transformer.norm_f",
            lm_head="lm_head.weight", norm="layer_no_bias", attn_norm="norm_1", mlp_norm="norm_2",
            qkv=("attn.Wqkv",), qkv_split="fused", o_proj="attn.out_proj", mlp=("ffn.up_proj", "ffn.down_proj"),
            mlp_kind="plain", eps_key="layer_norm_epsilon", position="alibi", alibi_keys="cache",
            fixed_activation="gelu_erf", linear_bias=False, optional_prefix="transformer.",
        ),
        OnnxLayout(
            "gpt2", embed="transformer.wte.weight", layer="transformer.h.{i}.", final_norm="transformer.ln_f",
            lm_head="lm_head.weight", norm="layer", attn_norm="ln_1", mlp_norm="ln_2", qkv=("attn.c_attn",),
            qkv_split="fused", o_proj="attn.c_proj", mlp=("mlp.c_fc", "mlp.c_proj"), mlp_kind="plain",
            activation_key="activation_function", eps_key="layer_norm_epsilon", position="absolute", conv1d=True,
            optional_prefix="transformer.",
        ),
        OnnxLayout(
            "opt", embed="model.decoder.embed_tokens.weight", layer="model.decoder.layers.{i}.",
            final_norm="model.decoder.final_layer_norm", lm_head="lm_head.weight", norm="layer",
            attn_norm="self_attn_layer_norm", mlp_norm="final_layer_norm",
            qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), qkv_split="separate",
            o_proj="self_attn.out_proj", mlp=("fc1", "fc2"), mlp_kind="plain", activation_key="activation_function",
            position="absolute", query_prescaled=True, post_norm_key="do_layer_norm_before",
            project=("model.decoder.project_in", "model.decoder.project_out"), optional_prefix="model.",
        ),
        OnnxLayout("olmo2", **dict(_LLAMA, attn_norm=None, mlp_norm=None), post_attn_norm="post_attention_layernorm",
                   post_mlp_norm="post_feedforward_layernorm", qk_norm=("self_attn.q_norm", "self_attn.k_norm")),
        OnnxLayout("smollm3", **_LLAMA, rope_layers_key="no_rope_layers"),
        OnnxLayout("gemma", **_GEMMA),
        OnnxLayout("gemma2", **dict(_GEMMA, mlp_norm="pre_feedforward_layernorm", activation_key="hidden_activation"),
                   post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
                   query_scalar_key="query_pre_attn_scalar", softcaps=True),
        # --- gemma3 ---
        # gemma2's blocks with q/k RMSNorm (1 + w) per head; per-layer-type rope (DecoderDims.layer_thetas)
        OnnxLayout("gemma3_text", **dict(_GEMMA, mlp_norm="pre_feedforward_layernorm",
                                         activation_key="hidden_activation"),
                   post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
                   query_scalar_key="query_pre_attn_scalar", softcaps=True,
                   qk_norm=("self_attn.q_norm", "self_attn.k_norm"), qk_norm_per_head=True),
        # --- end gemma3 ---
    )
}

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
    try:
        return LAYOUTS[model_type]
    except KeyError:
        raise UnsupportedError(
            f"{model_type} cannot be written as ONNX yet (supported: {', '.join(sorted(LAYOUTS))}); "
            "use --to safetensors"
        ) from None
