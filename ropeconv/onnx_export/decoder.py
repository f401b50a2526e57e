"""The decoder-with-KV-cache graph, built from an OnnxLayout and the model's dimensions.

Inputs and outputs follow optimum's names (what ORTModelForCausalLM and onnxruntime-genai read):
  input_ids [batch, seq] int64, attention_mask [batch, total] int64, position_ids [batch, seq] int64,
  past_key_values.{i}.key/value [batch, kv_heads, past, head_dim]
  → logits [batch, seq, vocab], present.{i}.key/value [batch, kv_heads, total, head_dim]
Everything is computed in float32 in the order transformers computes it (norms, scores × scale, soft-cap,
mask, softmax), so the only differences from transformers are float32 rounding of kernels.
The causal mask uses cache indices (past + i), as transformers does, and the padding mask from
attention_mask; position_ids only feed the rotary embedding or the learned position table. ALiBi graphs
take no position_ids (as optimum's BLOOM export): their bias is built from attention_mask (alibi.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import GraphProto, helper

from ropeconv.onnx_export.alibi import alibi_bias
from ropeconv.onnx_export.graph import BOOL, FLOAT, INT64, GraphBuilder
from ropeconv.onnx_export.layouts import OnnxLayout
from ropeconv.onnx_export.rotary import cos_sin
from ropeconv.positions import PositionPlan

MASKED = float(np.finfo(np.float32).min)  # transformers' additive mask value


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


@dataclass(frozen=True)
class Weights:
    """Initializer names the graph reads; `half` names are stored as float16 and cast on use."""

    names: frozenset[str]
    half: frozenset[str]


def io_names(n_layers: int, position_ids: bool = True) -> tuple[list[str], list[str]]:
    inputs = ["input_ids", "attention_mask"] + (["position_ids"] if position_ids else [])
    outputs = ["logits"]
    for i in range(n_layers):
        inputs += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        outputs += [f"present.{i}.key", f"present.{i}.value"]
    return inputs, outputs


def build_decoder(layout: OnnxLayout, dims: DecoderDims, plan: PositionPlan, weights: Weights) -> GraphProto:
    b = _Decoder(layout, dims, plan, weights)
    return b.graph()


class _Decoder:
    def __init__(self, layout: OnnxLayout, dims: DecoderDims, plan: PositionPlan, weights: Weights):
        self.layout, self.dims, self.plan, self.weights = layout, dims, plan, weights
        self.g = GraphBuilder()
        self._cast: dict[str, str] = {}
        self.rope: tuple[str, str] | None = None  # (cos, sin)
        self.bias: str | None = None  # the ALiBi bias, added to every layer's scores

    # weights -------------------------------------------------------------------------------------
    def w(self, name: str) -> str:
        if name not in self.weights.names:
            raise KeyError(name)
        if name not in self.weights.half:
            return name
        if name not in self._cast:
            self._cast[name] = self.g.op("Cast", [name], to=FLOAT)
        return self._cast[name]

    def maybe(self, name: str) -> str | None:
        return self.w(name) if name in self.weights.names else None

    def proj(self, x: str, prefix: str) -> str:
        return self.g.linear(x, self.w(f"{prefix}.weight"), self.maybe(f"{prefix}.bias"))

    # blocks --------------------------------------------------------------------------------------
    def norm(self, x: str, prefix: str) -> str:
        g, eps = self.g, self.dims.norm_eps
        if self.layout.norm in ("layer", "layer_no_bias"):
            bias = [self.w(f"{prefix}.bias")] if self.layout.norm == "layer" else []
            return g.op("LayerNormalization", [x, self.w(f"{prefix}.weight"), *bias], axis=-1, epsilon=eps)
        variance = g.op("ReduceMean", [g.op("Mul", [x, x]), g.ints(-1)], keepdims=1)
        normed = g.op("Mul", [x, g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [variance, g.const(eps)])])])])
        scale = self.w(f"{prefix}.weight")
        if self.layout.norm == "rms_plus_one":
            scale = g.op("Add", [g.const(1.0), scale])
        return g.op("Mul", [normed, scale])

    def activation(self, x: str) -> str:
        g, kind = self.g, self.dims.activation
        if kind == "silu":
            return g.op("Mul", [x, g.op("Sigmoid", [x])])
        if kind == "gelu_erf":
            erf = g.op("Erf", [g.op("Mul", [x, g.const(1 / np.sqrt(2.0))])])
            return g.op("Mul", [g.op("Mul", [x, g.const(0.5)]), g.op("Add", [erf, g.const(1.0)])])
        if kind == "gelu_tanh":
            cube = g.op("Mul", [g.op("Mul", [x, x]), x])
            inner = g.op("Mul", [g.op("Add", [x, g.op("Mul", [cube, g.const(0.044715)])]),
                                 g.const(np.sqrt(2.0 / np.pi))])
            return g.op("Mul", [g.op("Mul", [x, g.const(0.5)]), g.op("Add", [g.op("Tanh", [inner]), g.const(1.0)])])
        if kind == "gelu_bloom":
            # bloom_gelu_forward: x·0.5·(1 + tanh(0.79788456·x·(1 + 0.044715·x²))), its own rounded constant
            inner = g.op("Mul", [g.op("Mul", [x, g.const(0.79788456)]),
                                 g.op("Add", [g.op("Mul", [g.op("Mul", [x, g.const(0.044715)]), x]), g.const(1.0)])])
            return g.op("Mul", [g.op("Mul", [x, g.const(0.5)]), g.op("Add", [g.op("Tanh", [inner]), g.const(1.0)])])
        if kind == "relu":
            return g.op("Relu", [x])
        raise AssertionError(kind)

    def mlp(self, x: str, prefix: str) -> str:
        g, names = self.g, [prefix + n for n in self.layout.mlp]
        if self.layout.mlp_kind == "plain":
            return self.proj(self.activation(self.proj(x, names[0])), names[1])
        if self.layout.mlp_kind == "gated_fused":
            gate, up = g.op("Split", [self.proj(x, names[0])], n_out=2, axis=-1, num_outputs=2)
            down = names[1]
        else:
            gate, up, down = self.proj(x, names[0]), self.proj(x, names[1]), names[2]
        return self.proj(g.op("Mul", [self.activation(gate), up]), down)

    def heads(self, x: str, n_heads: int) -> str:
        """[b, s, n·d] → [b, n, s, d]"""
        g = self.g
        return g.op("Transpose", [g.op("Reshape", [x, g.ints(0, 0, n_heads, self.dims.head_dim)])], perm=[0, 2, 1, 3])

    def qkv(self, x: str, prefix: str) -> tuple[str, str, str]:
        g, d = self.g, self.dims
        names = [prefix + n for n in self.layout.qkv]
        if self.layout.qkv_split == "separate":
            q, k, v = (self.proj(x, n) for n in names)
            return self.heads(q, d.heads), self.heads(k, d.heads_kv), self.heads(v, d.heads_kv)
        fused = self.proj(x, names[0])
        if d.clip_qkv:
            fused = g.op("Clip", [fused, g.const(-d.clip_qkv), g.const(d.clip_qkv)])
        if self.layout.qkv_split == "fused":
            sizes = g.ints(d.heads * d.head_dim, d.heads_kv * d.head_dim, d.heads_kv * d.head_dim)
            q, k, v = g.op("Split", [fused, sizes], n_out=3, axis=-1)
            return self.heads(q, d.heads), self.heads(k, d.heads_kv), self.heads(v, d.heads_kv)
        # per head: [b, s, h, 3d] → [b, h, s, 3d] → q, k, v
        per_head = g.op("Transpose", [g.op("Reshape", [fused, g.ints(0, 0, d.heads, 3 * d.head_dim)])],
                        perm=[0, 2, 1, 3])
        q, k, v = g.op("Split", [per_head], n_out=3, axis=-1, num_outputs=3)
        return q, k, v

    def rotate(self, x: str, cos: str, sin: str) -> str:
        g, d = self.g, self.dims
        partial = d.rotary_dim < d.head_dim
        x_rot = g.slice_last(x, 0, d.rotary_dim) if partial else x
        x1, x2 = g.op("Split", [x_rot], n_out=2, axis=-1, num_outputs=2)
        half = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
        out = g.op("Add", [g.op("Mul", [x_rot, cos]), g.op("Mul", [half, sin])])
        if partial:
            out = g.op("Concat", [out, g.slice_last(x, d.rotary_dim, d.head_dim)], axis=-1)
        return out

    def attention(self, x: str, i: int, prefix: str, masks: dict) -> str:
        g, d = self.g, self.dims
        q, k, v = self.qkv(x, prefix)
        if self.rope:
            q, k = self.rotate(q, *self.rope), self.rotate(k, *self.rope)
        scale = d.attn_scale / (i + 1) if d.scale_by_layer else d.attn_scale
        if self.layout.query_prescaled:
            q, scale = g.op("Mul", [q, g.const(scale)]), None
        k = g.op_into("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
        v = g.op_into("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        group = d.heads // d.heads_kv
        # grouped heads by broadcasting: q [b, kv, group, s, d] against k, v [b, kv, 1, t, d]
        q5 = g.op("Reshape", [q, g.ints(0, d.heads_kv, group, -1, d.head_dim)])
        k5 = g.op("Unsqueeze", [g.op("Transpose", [k], perm=[0, 1, 3, 2]), g.ints(2)])
        v5 = g.op("Unsqueeze", [v, g.ints(2)])
        scores = g.op("MatMul", [q5, k5])
        if scale is not None:
            scores = g.op("Mul", [scores, g.const(scale)])
        if d.attn_softcap:
            cap = g.const(d.attn_softcap)
            scores = g.op("Mul", [g.op("Tanh", [g.op("Div", [scores, cap])]), cap])
        if self.bias:
            scores = g.op("Add", [scores, self.bias])
        scores = g.op("Add", [scores, masks[d.windows[i]]])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v5])  # [b, kv, group, s, d]
        per_head = g.op("Reshape", [context, g.ints(0, d.heads, -1, d.head_dim)])  # [b, h, s, d]
        merged = g.op("Reshape", [g.op("Transpose", [per_head], perm=[0, 2, 1, 3]), g.ints(0, 0, d.heads * d.head_dim)])
        return self.proj(merged, prefix + self.layout.o_proj)

    def masks(self) -> dict:
        """Additive masks [b, 1, 1, s, t], one per distinct window (None: full causal)."""
        g = self.g
        past = g.op("Shape", ["past_key_values.0.key"], start=2, end=3)
        seq = g.op("Shape", ["input_ids"], start=1, end=2)
        total = g.op("Shape", ["attention_mask"], start=1, end=2)
        scalar = g.ints(0)
        past_s = g.op("Squeeze", [past, scalar])
        q_idx = g.op("Range", [past_s, g.op("Squeeze", [g.op("Add", [past, seq]), scalar]), g.const(1, np.int64)])
        k_idx = g.op("Range", [g.const(0, np.int64), g.op("Squeeze", [total, scalar]), g.const(1, np.int64)])
        q_col, k_row = g.op("Unsqueeze", [q_idx, g.ints(1)]), g.op("Unsqueeze", [k_idx, g.ints(0)])
        causal = g.op("LessOrEqual", [k_row, q_col])  # [s, t]
        padding = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=BOOL), g.ints(1, 2, 3)])  # [b, 1, 1, 1, t]
        out = {}
        for window in sorted(set(self.dims.windows), key=lambda w: -1 if w is None else w):
            allowed = causal
            if window is not None:
                # transformers' sliding_window_overlay: kv_idx > q_idx - window
                near = g.op("Less", [g.op("Sub", [q_col, k_row]), g.const(window, np.int64)])
                allowed = g.op("And", [causal, near])
            allowed = g.op("And", [allowed, padding])
            out[window] = g.op("Where", [allowed, g.const(0.0), g.const(MASKED)], hint="mask")
        return out

    def embed(self) -> str:
        g, d, lay = self.g, self.dims, self.layout
        h = g.op("Gather", [self.w(lay.embed), "input_ids"])
        if d.embed_scale:
            h = g.op("Mul", [h, g.const(d.embed_scale)])
        if lay.project and d.embed_dim:
            h = self.proj(h, lay.project[0])
        if self.plan.kind == "absolute":
            rows = g.op("Add", ["position_ids", g.const(self.plan.offset, np.int64)])
            h = g.op("Add", [h, g.op("Gather", [self.w(self.plan.table), rows], hint="positions/table")])
        if lay.embed_norm:
            h = self.norm(h, lay.embed_norm)
        return h

    def block(self, h: str, i: int, masks: dict) -> str:
        g, d, lay = self.g, self.dims, self.layout
        p = lay.layer.format(i=i)
        if d.post_norm:  # OPT 350m: x = norm(x + f(x)) for attention, then the MLP
            h = self.norm(g.op("Add", [h, self.attention(h, i, p, masks)]), p + lay.attn_norm)
            return self.norm(g.op("Add", [h, self.mlp(h, p)]), p + lay.mlp_norm)
        normed = self.norm(h, p + lay.attn_norm)
        attn = self.attention(normed, i, p, masks)
        if lay.post_attn_norm:
            attn = self.norm(attn, p + lay.post_attn_norm)
        if d.parallel_residual:
            mlp = self.mlp(self.norm(h, p + lay.mlp_norm), p)
            return g.op("Add", [g.op("Add", [mlp, attn]), h])
        h = g.op("Add", [normed if d.residual_from_norm else h, attn])
        normed = self.norm(h, p + lay.mlp_norm)
        mlp = self.mlp(normed, p)
        if lay.post_mlp_norm:
            mlp = self.norm(mlp, p + lay.post_mlp_norm)
        return g.op("Add", [normed if d.residual_from_norm else h, mlp])

    def graph(self) -> GraphProto:
        g, d, lay = self.g, self.dims, self.layout
        h = self.embed()
        if self.plan.kind == "rope":
            self.rope = cos_sin(g, self.plan, "position_ids")
        elif self.plan.kind == "alibi":
            self.bias = alibi_bias(g, self.plan, lay.alibi_keys, "attention_mask")
        masks = self.masks()
        for i in range(d.n_layers):
            h = self.block(h, i, masks)
        if d.final_norm:
            h = self.norm(h, lay.final_norm)
        if lay.project and d.embed_dim:
            h = self.proj(h, lay.project[1])
        logits = g.op("MatMul", [h, self.w(lay.lm_head)])
        if d.final_softcap:
            cap = g.const(d.final_softcap)
            logits = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, cap])]), cap])
        g.op_into("Identity", [logits], "logits")
        return self._graph_proto()

    def _graph_proto(self) -> GraphProto:
        d = self.dims
        kv_shape = ["batch_size", d.heads_kv, "past_sequence_length", d.head_dim]
        present_shape = ["batch_size", d.heads_kv, "total_sequence_length", d.head_dim]
        inputs = [
            helper.make_tensor_value_info("input_ids", INT64, ["batch_size", "sequence_length"]),
            helper.make_tensor_value_info("attention_mask", INT64, ["batch_size", "total_sequence_length"]),
        ]
        if self.plan.kind != "alibi":
            inputs.append(helper.make_tensor_value_info("position_ids", INT64, ["batch_size", "sequence_length"]))
        outputs = [helper.make_tensor_value_info("logits", FLOAT, ["batch_size", "sequence_length", d.vocab])]
        for i in range(d.n_layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", FLOAT, kv_shape))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", FLOAT, present_shape))
        return helper.make_graph(self.g.nodes, "ropeconv_decoder", inputs, outputs, initializer=self.g.constants)
