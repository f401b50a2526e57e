"""The decoder-with-KV-cache graph, built from an OnnxLayout and the model's dimensions.

Inputs and outputs follow optimum's names (what ORTModelForCausalLM and onnxruntime-genai read):
  input_ids [batch, seq] int64, attention_mask [batch, total] int64, position_ids [batch, seq] int64,
  past_key_values.{i}.key/value [batch, kv_heads, past, head_dim], num_logits_to_keep [] int64 (optional, default
  0: every position, as transformers' logits_to_keep; k > 0: the last k positions only)
  → logits [batch, kept, vocab] float32, present.{i}.key/value [batch, kv_heads, total, head_dim]
Activations and the KV cache are in the compute dtype (float32, or float16 for --dtype fp16, where norms, the
rotary angles and the plain attention's softmax stay float32 as transformers keeps them); logits are float32.

Attention runs in onnxruntime's fused com.microsoft.GroupQueryAttention kernel, which never holds the
scores of a call (memory linear in the length): causal masking from the cache index (past + i), the sliding
window as its local_window_size (transformers' kv > q − window), gemma2's soft-cap as its softcap (applied, as
transformers does, after the scale and before the mask), heads grouped natively, no rotary inside the kernel:
queries and keys arrive rotated by the plan's own subgraph (rotary.py) at each token's position_ids — the
kernel would read a first prompt's positions from its first element only, which misplaces a left-padded row.
Padding in attention_mask is an additive bias [batch, 1, seq, total] (transformers' finfo.min), built and passed
only when a row has padding (an If on the mask), so an unpadded call holds no n × n tensor at all.
ALiBi families keep the plain-operator attention (MatMul, Softmax): their bias differs per head and the fused
kernel takes a per-head bias only as a full [batch, heads, seq, total] tensor. ALiBi graphs take no
position_ids (as optimum's BLOOM export): their bias is built from attention_mask (alibi.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import GraphProto, helper, numpy_helper

from ropeconv.onnx_export.alibi import alibi_bias
from ropeconv.onnx_export.dims import Compute, DecoderDims, uses_fused_attention
from ropeconv.onnx_export.graph import BOOL, FLOAT, FLOAT16, INT32, INT64, GraphBuilder
from ropeconv.onnx_export.layouts import OnnxLayout
from ropeconv.onnx_export.moe import is_sparse, moe_mlp
from ropeconv.onnx_export.rotary import cos_sin, unscaled_cos_sin
from ropeconv.positions import PositionPlan

MASKED = float(np.finfo(np.float32).min)  # transformers' additive mask value
MS_DOMAIN = "com.microsoft"
KEEP_LOGITS = "num_logits_to_keep"
COMPUTE_TYPES: dict[str, tuple[int, type[np.floating]]] = {"float32": (FLOAT, np.float32),
                                                             "float16": (FLOAT16, np.float16)}


@dataclass(frozen=True)
class Weights:
    """Initializer names the graph reads; `half` names are stored as float16, `nbits` (name, K, N) as
    MatMulNBits blocks (`<name>_Q4`, `<name>_scales`, written by onnxruntime's quantizer)."""

    names: frozenset[str]
    half: frozenset[str] = frozenset()
    nbits: tuple[tuple[str, int, int], ...] = ()


def quantized_names(name: str) -> tuple[str, str]:
    """The MatMulNBits initializers onnxruntime's MatMulNBitsQuantizer names after a MatMul weight."""
    return f"{name}_Q4", f"{name}_scales"


def build_decoder(layout: OnnxLayout, dims: DecoderDims, plan: PositionPlan, weights: Weights,
                  compute: Compute = Compute()) -> GraphProto:
    b = _Decoder(layout, dims, plan, weights, compute)
    return b.graph()


class _Decoder:
    def __init__(self, layout: OnnxLayout, dims: DecoderDims, plan: PositionPlan, weights: Weights,
                 compute: Compute):
        self.layout, self.dims, self.plan, self.weights, self.compute = layout, dims, plan, weights, compute
        self.cdt, self.np_cdt = COMPUTE_TYPES[compute.dtype]
        self.fused = uses_fused_attention(layout, compute)
        self.nbits = {name: (k, n) for name, k, n in weights.nbits}
        self.g = GraphBuilder()
        self._cast: dict[tuple[str, int], str] = {}
        self.rope: tuple[str, str] | None = None  # (cos, sin) in the compute dtype
        self.fixed_rope: dict[float, tuple[str, str]] = {}  # base → (cos, sin) of layers the method leaves alone
        self.bias: str | None = None  # the ALiBi bias, added to every layer's scores
        self.gqa: dict[str, str] = {}  # the fused kernel's per-call inputs (seqlens, lengths, padding bias)

    # dtypes --------------------------------------------------------------------------------------
    def c(self, value) -> str:
        """A constant in the compute dtype."""
        return self.g.const(value, self.np_cdt)

    def to32(self, x: str) -> str:
        return x if self.cdt == FLOAT else self.g.op("Cast", [x], to=FLOAT)

    def from32(self, x: str) -> str:
        return x if self.cdt == FLOAT else self.g.op("Cast", [x], to=self.cdt)

    # weights -------------------------------------------------------------------------------------
    def w(self, name: str, to: int | None = None) -> str:
        """A stored tensor in dtype `to` (default: the compute dtype); casts of initializers are folded by
        onnxruntime when the session loads."""
        if name not in self.weights.names:
            raise KeyError(name)
        to = self.cdt if to is None else to
        stored = FLOAT16 if name in self.weights.half else FLOAT
        if stored == to:
            return name
        if (name, to) not in self._cast:
            self._cast[(name, to)] = self.g.op("Cast", [name], to=to)
        return self._cast[(name, to)]

    def maybe(self, name: str) -> str | None:
        return self.w(name) if name in self.weights.names else None

    def matmul(self, x: str, name: str) -> str:
        if name in self.nbits:
            k, n = self.nbits[name]
            packed, scales = quantized_names(name)
            attrs: dict[str, Any] = dict(K=k, N=n, bits=4, block_size=self.compute.block_size)
            if self.compute.accuracy_level:
                attrs["accuracy_level"] = self.compute.accuracy_level
            return self.g.op("MatMulNBits", [x, packed, scales], domain=MS_DOMAIN, **attrs)
        return self.g.op("MatMul", [x, self.w(name)])

    def proj(self, x: str, prefix: str) -> str:
        y = self.matmul(x, f"{prefix}.weight")
        bias = self.maybe(f"{prefix}.bias")
        return self.g.op("Add", [y, bias]) if bias else y

    # blocks --------------------------------------------------------------------------------------
    def norm(self, x: str, prefix: str) -> str:
        """In float32 whatever the compute dtype (transformers' RMSNorm upcasts too)."""
        g, eps = self.g, self.dims.norm_eps
        x = self.to32(x)
        if self.layout.norm in ("layer", "layer_no_bias"):
            bias = [self.w(f"{prefix}.bias", FLOAT)] if self.layout.norm == "layer" else []
            out = g.op("LayerNormalization", [x, self.w(f"{prefix}.weight", FLOAT), *bias], axis=-1, epsilon=eps)
            return self.from32(out)
        variance = g.op("ReduceMean", [g.op("Mul", [x, x]), g.ints(-1)], keepdims=1)
        normed = g.op("Mul", [x, g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [variance, g.const(eps)])])])])
        scale = self.w(f"{prefix}.weight", FLOAT)
        if self.layout.norm == "rms_plus_one":
            scale = g.op("Add", [g.const(1.0), scale])
        return self.from32(g.op("Mul", [normed, scale]))

    def activation(self, x: str) -> str:
        g, kind = self.g, self.dims.activation
        if kind == "silu":
            return g.op("Mul", [x, g.op("Sigmoid", [x])])
        if kind == "gelu_erf":
            erf = g.op("Erf", [g.op("Mul", [x, self.c(1 / np.sqrt(2.0))])])
            return g.op("Mul", [g.op("Mul", [x, self.c(0.5)]), g.op("Add", [erf, self.c(1.0)])])
        if kind == "gelu_tanh":
            cube = g.op("Mul", [g.op("Mul", [x, x]), x])
            inner = g.op("Mul", [g.op("Add", [x, g.op("Mul", [cube, self.c(0.044715)])]),
                                 self.c(np.sqrt(2.0 / np.pi))])
            return g.op("Mul", [g.op("Mul", [x, self.c(0.5)]), g.op("Add", [g.op("Tanh", [inner]), self.c(1.0)])])
        if kind == "gelu_bloom":
            # bloom_gelu_forward: x·0.5·(1 + tanh(0.79788456·x·(1 + 0.044715·x²))), its own rounded constant
            inner = g.op("Mul", [g.op("Mul", [x, self.c(0.79788456)]),
                                 g.op("Add", [g.op("Mul", [g.op("Mul", [x, self.c(0.044715)]), x]), self.c(1.0)])])
            return g.op("Mul", [g.op("Mul", [x, self.c(0.5)]), g.op("Add", [g.op("Tanh", [inner]), self.c(1.0)])])
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

    # attention -----------------------------------------------------------------------------------
    def qkv(self, x: str, prefix: str) -> tuple[str, str, str]:
        """q [b, s, heads, d], k and v [b, s, kv_heads, d]."""
        g, d = self.g, self.dims
        names = [prefix + n for n in self.layout.qkv]
        split = lambda y, n: g.op("Reshape", [y, g.ints(0, 0, n, d.head_dim)])  # noqa: E731
        if self.layout.qkv_split == "separate":
            q, k, v = (self.proj(x, n) for n in names)
            norms = self.layout.qk_norm and tuple(prefix + n for n in self.layout.qk_norm)
            if norms and not self.layout.qk_norm_per_head:  # olmo2: over the whole projection, before the split
                q, k = self.norm(q, norms[0]), self.norm(k, norms[1])
            q, k, v = split(q, d.heads), split(k, d.heads_kv), split(v, d.heads_kv)
            if norms and self.layout.qk_norm_per_head:  # qwen3: over each head's last axis
                q, k = self.norm(q, norms[0]), self.norm(k, norms[1])
            return q, k, v
        fused = self.proj(x, names[0])
        if d.clip_qkv:
            fused = g.op("Clip", [fused, self.c(-d.clip_qkv), self.c(d.clip_qkv)])
        if self.layout.qkv_split == "fused":
            sizes = g.ints(d.heads * d.head_dim, d.heads_kv * d.head_dim, d.heads_kv * d.head_dim)
            q, k, v = g.op("Split", [fused, sizes], n_out=3, axis=-1)
            return split(q, d.heads), split(k, d.heads_kv), split(v, d.heads_kv)
        # per head: [b, s, h, 3d] → q, k, v
        per_head = g.op("Reshape", [fused, g.ints(0, 0, d.heads, 3 * d.head_dim)])
        q, k, v = g.op("Split", [per_head], n_out=3, axis=-1, num_outputs=3)
        return q, k, v

    def rotate(self, x: str, cos: str, sin: str) -> str:
        """transformers' apply_rotary_pos_emb on the last axis: x·cos + rotate_half(x)·sin."""
        g, d = self.g, self.dims
        partial = d.rotary_dim < d.head_dim
        x_rot = g.slice_last(x, 0, d.rotary_dim) if partial else x
        x1, x2 = g.op("Split", [x_rot], n_out=2, axis=-1, num_outputs=2)
        half = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
        out = g.op("Add", [g.op("Mul", [x_rot, cos]), g.op("Mul", [half, sin])])
        if partial:
            out = g.op("Concat", [out, g.slice_last(x, d.rotary_dim, d.head_dim)], axis=-1)
        return out

    def layer_scale(self, i: int) -> float:
        d = self.dims
        return d.attn_scale / (i + 1) if d.scale_by_layer else d.attn_scale

    def attention(self, x: str, i: int, prefix: str, masks: dict) -> str:
        q, k, v = self.qkv(x, prefix)
        if self.rope and (self.dims.rope_layers is None or self.dims.rope_layers[i]):
            theta = self.dims.layer_thetas[i] if self.dims.layer_thetas else None
            rope = self.rope if theta is None else self.fixed_rope[theta]
            q, k = self.rotate(q, *rope), self.rotate(k, *rope)
        out = self.fused_attention(q, k, v, i) if self.fused else self.plain_attention(q, k, v, i, masks)
        return self.proj(out, prefix + self.layout.o_proj)

    def fused_attention(self, q: str, k: str, v: str, i: int) -> str:
        """GroupQueryAttention on [b, s, n·d] inputs; the padded variant (with the mask's bias) runs only when a
        row of attention_mask has padding."""
        g, d = self.g, self.dims
        flat = g.ints(0, 0, -1)
        q, k, v = (g.op("Reshape", [t, flat]) for t in (q, k, v))
        scale = self.layer_scale(i)
        if self.layout.query_prescaled:  # OPT: q_proj(x)·scale, then the scores unscaled (its rounding order)
            q, scale = g.op("Mul", [q, self.c(scale)]), 1.0
        attrs: dict = dict(num_heads=d.heads, kv_num_heads=d.heads_kv, scale=float(scale))
        if d.attn_softcap:
            attrs["softcap"] = float(d.attn_softcap)
        window = d.windows[i]
        if window is not None:
            attrs["local_window_size"] = int(window)
        ctx = self.gqa
        common = [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", ctx["seqlens_k"], ctx["total"]]
        # inputs 7–9 (cos/sin caches, position_ids) unused: q and k arrive rotated; 16: query_seqlens, which lets a
        # batch take several tokens after a past (chunked prefill)
        tail = [""] * 5 + [ctx["query_seqlens"]]
        out = g._fresh("attn")
        outputs = [out, f"present.{i}.key", f"present.{i}.value"]

        def branch(name: str, bias: str) -> GraphProto:
            inner = [g._fresh(f"{name}/out") for _ in outputs]
            node = helper.make_node("GroupQueryAttention", common + ["", "", "", bias] + tail, inner,
                                    name=g._fresh("node/GroupQueryAttention"), domain=MS_DOMAIN, **attrs)
            return helper.make_graph([node], g._fresh(name), [],
                                     [helper.make_tensor_value_info(n, self.cdt, None) for n in inner])

        g.nodes.append(helper.make_node("If", [ctx["padded"]], outputs, name=g._fresh("node/If"),
                                        then_branch=branch("padded", ctx["bias"]), else_branch=branch("unpadded", "")))
        return out

    def plain_attention(self, q: str, k: str, v: str, i: int, masks: dict) -> str:
        """Standard operators in float32: scores [b, kv, group, s, t] by broadcasting grouped heads (no repeated
        K/V). Holds heads × new × (past + new) scores per layer."""
        g, d = self.g, self.dims
        to_heads = lambda t: g.op("Transpose", [t], perm=[0, 2, 1, 3])  # noqa: E731  [b, s, n, d] → [b, n, s, d]
        q, k, v = to_heads(q), to_heads(k), to_heads(v)
        scale: float | None = self.layer_scale(i)
        if self.layout.query_prescaled:
            q, scale = g.op("Mul", [q, self.c(scale)]), None
        k = g.op_into("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
        v = g.op_into("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        q, k, v = self.to32(q), self.to32(k), self.to32(v)
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
        return self.from32(merged)

    def fused_inputs(self) -> dict[str, str]:
        """What every GroupQueryAttention call reads: each row's total length − 1 (every row is as long as
        attention_mask: padding is the bias's job), the total, the new tokens per row, and whether any row is
        padded — with the bias [b, 1, s, total] only then (a [1, 1, 1, 1] placeholder otherwise, never read)."""
        g = self.g
        scalar = g.ints(0)
        total = g.op("Squeeze", [g.op("Shape", ["attention_mask"], start=1, end=2), scalar])
        batch = g.op("Shape", ["input_ids"], start=0, end=1)
        seq = g.op("Shape", ["input_ids"], start=1, end=2)
        per_row = lambda n: g.op("Cast", [g.op("Expand", [n, batch])], to=INT32)  # noqa: E731
        padded = g.op("Less", [g.op("ReduceMin", ["attention_mask"], keepdims=0), g.const(1, np.int64)],
                      hint="attention/padded")
        keep = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=BOOL), g.ints(1, 2)])  # [b, 1, 1, t]
        masked = float(np.finfo(self.np_cdt).min)
        then_out, else_out = g._fresh("attention/bias"), g._fresh("attention/no_bias")
        shape = g.op("Concat", [batch, g.ints(1), seq, g.op("Shape", ["attention_mask"], start=1, end=2)], axis=0)
        then_nodes = [
            helper.make_node("Where", [keep, self.c(0.0), self.c(masked)], [then_out + "/rows"], name=g._fresh("node/Where")),
            helper.make_node("Expand", [then_out + "/rows", shape], [then_out], name=g._fresh("node/Expand")),
        ]
        else_nodes = [helper.make_node("Identity", [self.c(np.zeros((1, 1, 1, 1)))], [else_out],
                                       name=g._fresh("node/Identity"))]
        bias = g._fresh("attention/padding_bias")
        g.nodes.append(helper.make_node(
            "If", [padded], [bias], name=g._fresh("node/If"),
            then_branch=helper.make_graph(then_nodes, g._fresh("with_padding"), [],
                                          [helper.make_tensor_value_info(then_out, self.cdt, None)]),
            else_branch=helper.make_graph(else_nodes, g._fresh("without_padding"), [],
                                          [helper.make_tensor_value_info(else_out, self.cdt, None)])))
        return {"seqlens_k": per_row(g.op("Sub", [total, g.const(1, np.int64)])),
                "total": g.op("Cast", [total], to=INT32), "query_seqlens": per_row(g.op("Squeeze", [seq, scalar])),
                "padded": padded, "bias": bias}

    def masks(self) -> dict:
        """Additive masks [b, 1, 1, s, t] for the plain attention, one per distinct window (None: full causal)."""
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

    # the rest --------------------------------------------------------------------------------------
    def embed(self) -> str:
        g, d, lay = self.g, self.dims, self.layout
        h = g.op("Gather", [self.w(lay.embed), "input_ids"])
        if d.embed_scale:
            h = g.op("Mul", [h, self.c(d.embed_scale)])
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
            assert lay.attn_norm and lay.mlp_norm  # OPT has both
            h = self.norm(g.op("Add", [h, self.attention(h, i, p, masks)]), p + lay.attn_norm)
            return self.norm(g.op("Add", [h, self.mlp(h, p)]), p + lay.mlp_norm)
        normed = self.norm(h, p + lay.attn_norm) if lay.attn_norm else h
        attn = self.attention(normed, i, p, masks)
        if lay.post_attn_norm:
            attn = self.norm(attn, p + lay.post_attn_norm)
        if d.parallel_residual:
            assert lay.mlp_norm  # gpt_neox's post_attention_layernorm
            mlp = self.mlp(self.norm(h, p + lay.mlp_norm), p)
            return g.op("Add", [g.op("Add", [mlp, attn]), h])
        h = g.op("Add", [normed if d.residual_from_norm else h, attn])
        normed = self.norm(h, p + lay.mlp_norm) if lay.mlp_norm else h
        mlp = moe_mlp(self, normed, p) if is_sparse(self.dims, i) else self.mlp(normed, p)
        if lay.post_mlp_norm:
            mlp = self.norm(mlp, p + lay.post_mlp_norm)
        return g.op("Add", [normed if d.residual_from_norm else h, mlp])

    def graph(self) -> GraphProto:
        g, d, lay = self.g, self.dims, self.layout
        h = self.embed()
        if self.plan.kind == "rope":
            cos, sin = cos_sin(g, self.plan, "position_ids")  # [b, s, 1, d] beside q, k [b, s, heads, d]
            self.rope = (self.from32(cos), self.from32(sin))  # transformers: cos.to(x.dtype)
            for theta in sorted({t for t in d.layer_thetas or () if t is not None}):
                cos, sin = unscaled_cos_sin(g, theta, d.rotary_dim, "position_ids")
                self.fixed_rope[theta] = (self.from32(cos), self.from32(sin))
        elif self.plan.kind == "alibi":
            self.bias = alibi_bias(g, self.plan, lay.alibi_keys, "attention_mask")
        masks = {}
        if self.fused:
            self.gqa = self.fused_inputs()
        else:
            masks = self.masks()
        for i in range(d.n_layers):
            h = self.block(h, i, masks)
        # transformers' logits_to_keep: the last k positions (0: all), before the per-token tail of the model
        start = g.op("Reshape", [g.op("Neg", [KEEP_LOGITS]), g.ints(1)])
        h = g.op("Slice", [h, start, g.ints(np.iinfo(np.int64).max), g.ints(1)], hint="logits/kept")
        if d.final_norm:
            h = self.norm(h, lay.final_norm)
        if lay.project and d.embed_dim:
            h = self.proj(h, lay.project[1])
        logits = self.to32(self.matmul(h, lay.lm_head))
        if d.final_softcap:
            cap = g.const(d.final_softcap)
            logits = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, cap])]), cap])
        g.op_into("Identity", [logits], "logits")
        return self._graph_proto()

    def _graph_proto(self) -> GraphProto:
        d = self.dims
        kv_shape: list[str | int] = ["batch_size", d.heads_kv, "past_sequence_length", d.head_dim]
        present_shape: list[str | int] = ["batch_size", d.heads_kv, "total_sequence_length", d.head_dim]
        inputs = [
            helper.make_tensor_value_info("input_ids", INT64, ["batch_size", "sequence_length"]),
            helper.make_tensor_value_info("attention_mask", INT64, ["batch_size", "total_sequence_length"]),
        ]
        if self.plan.kind != "alibi":
            inputs.append(helper.make_tensor_value_info("position_ids", INT64, ["batch_size", "sequence_length"]))
        outputs = [helper.make_tensor_value_info("logits", FLOAT, ["batch_size", "logits_sequence_length", d.vocab])]
        for i in range(d.n_layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", self.cdt, kv_shape))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", self.cdt, present_shape))
        # an input with an initializer of the same name is optional: onnxruntime uses the value when it is not fed
        inputs.append(helper.make_tensor_value_info(KEEP_LOGITS, INT64, []))
        keep_default = numpy_helper.from_array(np.array(0, np.int64), KEEP_LOGITS)
        return helper.make_graph(self.g.nodes, "ropeconv_decoder", inputs, outputs,
                                 initializer=self.g.constants + [keep_default])
