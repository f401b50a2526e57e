"""What the decoder graph is built from, beside the layout: its dimensions and how it computes — plain data, so that
planning an export (onnx_export/plan.py) imports neither onnx nor numpy."""

from __future__ import annotations

from dataclasses import dataclass

from ropeconv.families import ARCHS
from ropeconv.families.spec import OnnxLayout
from ropeconv.onnx_export.moe import MoeDims


@dataclass(frozen=True)
class DecoderDims:
    n_layers: int
    hidden: int
    heads: int
    heads_kv: int
    head_dim: int
    rotary_dim: int  # 0 without rotary embedding
    vocab: int
    norm_eps: float
    activation: str  # a value of layouts.ACTIVATIONS
    attn_scale: float
    windows: tuple[int | None, ...]  # per layer: sliding window in tokens, or None
    parallel_residual: bool = False
    embed_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    embed_dim: int | None = None  # the embedding's width when it differs from hidden (OPT's word_embed_proj_dim)
    scale_by_layer: bool = False  # gpt2 scale_attn_by_inverse_layer_idx: layer i's scale ÷ (i + 1)
    post_norm: bool = False  # opt with do_layer_norm_before false
    residual_from_norm: bool = False  # bloom apply_residual_connection_post_layernorm
    final_norm: bool = True  # opt: none after post-norm blocks or with _remove_final_layer_norm
    clip_qkv: float | None = None  # mpt: the fused projection clamped to ±clip_qkv
    rope_layers: tuple[bool, ...] | None = None  # smollm3: per layer, whether q/k are rotated (None: all are)
    moe: MoeDims | None = None  # mixture of experts: count, top k, renormalization, which layers
    # per-layer-type rope (gemma3): per layer, the base of an unscaled rotation the method leaves alone, or None
    # where the plan's applies (None overall: the plan's on every layer)
    layer_thetas: tuple[float | None, ...] | None = None


@dataclass(frozen=True)
class Compute:
    """How the graph computes: its activation dtype, the attention kernel, MatMulNBits' settings."""

    dtype: str = "float32"  # a key of decoder.COMPUTE_TYPES
    fused_attention: bool = True  # False: the plain-operator attention for every family (comparisons, tests)
    block_size: int = 32
    accuracy_level: int = 4  # MatMulNBits: int8 activations on CPU


def uses_fused_attention(layout: OnnxLayout, compute: Compute) -> bool:
    return compute.fused_attention and ARCHS[layout.model_type].position != "alibi"
