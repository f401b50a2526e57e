"""The mixture-of-experts MLP of an ONNX decoder, exact with plain operators.

transformers (5.x models/<family>/modeling_<family>.py; 4.57 computes the same):
  logits = x · W_routerᵀ;  p = softmax(float32(logits));  (w, idx) = topk(p, k)
  w ← w / Σw   (Mixtral always; Qwen2/3-MoE when norm_topk_prob)
  y = Σ_j w_j · down_{idx_j}(act(gate_{idx_j}(x)) ⊙ up_{idx_j}(x))        (summed in increasing expert order)
  Qwen2-MoE adds a shared expert: y += sigmoid(x · W_sgᵀ) · down_s(act(gate_s(x)) ⊙ up_s(x)).
The graph scatters the top-k weights into a dense [b, s, E] routing (zeros elsewhere) and evaluates every
expert, adding y_e · w_e in expert order: an unselected expert adds an exact zero, so the sum is transformers'
(E× the FFN compute of a token; onnxruntime's com.microsoft.MoE kernel computes only the selected experts, but
its routing and accumulation order are its own, so exactness would rest on it instead of on this file).
The router stays unquantized under --dtype int4: a rounded router picks other experts, a different model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ropeconv.families.spec import MoeLayout  # the family files' data (a family file states it)


@dataclass(frozen=True)
class MoeDims:
    experts: int
    top_k: int
    renormalize: bool
    sparse: tuple[bool, ...]  # per layer: experts (True) or the dense MLP


def moe_dims(moe: MoeLayout, sparse_rule, cfg: Any, n_layers: int) -> MoeDims:
    """sparse_rule: the family's FamilyShapes.sparse (which layers hold experts), None for all of them."""
    from ropeconv.errors import InputError

    count = next((getattr(cfg, k) for k in moe.count_keys if getattr(cfg, k, None) is not None), None)
    top_k = getattr(cfg, "num_experts_per_tok", None)
    if not isinstance(count, int) or not isinstance(top_k, int) or not 0 < top_k <= count:
        raise InputError(f"config.json: {moe.count_keys[0]} {count!r} and num_experts_per_tok {top_k!r} must be "
                         "positive integers, the second at most the first")
    if sparse_rule is not None:
        config = cfg.to_dict()
        sparse = tuple(sparse_rule(config, i, {"experts": count}) for i in range(n_layers))
    else:
        sparse = (True,) * n_layers
    renormalize = True if moe.norm_topk_key is None else bool(getattr(cfg, moe.norm_topk_key, False))
    return MoeDims(count, top_k, renormalize, sparse)


def tensors(moe: MoeLayout, dims: MoeDims, prefix: str) -> list[tuple[str, str]]:
    """(name, kind) of one sparse layer's weights: kind "router" (never quantized) or "linear"."""
    out = [(f"{prefix}{moe.router}", "router")]
    for e in range(dims.experts):
        out += [(f"{prefix}{n.format(e=e)}", "linear") for n in moe.experts]
    if moe.shared:
        out += [(f"{prefix}{n}", "linear") for n in moe.shared]
        out.append((f"{prefix}{moe.shared_gate}", "router"))
    return out


def moe_mlp(d, x: str, prefix: str) -> str:
    """d: the decoder builder (its GraphBuilder g, proj, activation, casts); x [b, s, hidden]."""
    g, moe, dims = d.g, d.layout.moe, d.dims.moe
    probs = g.op("Softmax", [d.to32(d.proj(x, prefix + moe.router.removesuffix(".weight")))], axis=-1)
    top, index = g.op("TopK", [probs, g.ints(dims.top_k)], n_out=2, axis=-1, largest=1,
                      sorted=1)
    if dims.renormalize:
        top = g.op("Div", [top, g.op("ReduceSum", [top, g.ints(-1)], keepdims=1)])
    routing = g.op("ScatterElements", [g.op("Mul", [probs, g.const(0.0)]), index, top], axis=-1, hint="moe/routing")
    routing = d.from32(routing)  # transformers: the weights in the hidden states' dtype
    out = None
    for e in range(dims.experts):
        gate, up, down = (prefix + n.format(e=e).removesuffix(".weight") for n in moe.experts)
        y = d.proj(g.op("Mul", [d.activation(d.proj(x, gate)), d.proj(x, up)]), down)
        weight = g.op("Slice", [routing, g.ints(e), g.ints(e + 1), g.ints(-1)])
        y = g.op("Mul", [y, weight])
        out = y if out is None else g.op("Add", [out, y])
    if moe.shared:
        gate, up, down = (prefix + n.removesuffix(".weight") for n in moe.shared)
        shared = d.proj(g.op("Mul", [d.activation(d.proj(x, gate)), d.proj(x, up)]), down)
        sigmoid = g.op("Sigmoid", [d.proj(x, prefix + moe.shared_gate.removesuffix(".weight"))])
        out = g.op("Add", [out, g.op("Mul", [sigmoid, shared])])
    assert out is not None  # a sparse layer has at least one expert
    return out


def is_sparse(dims, i: int) -> bool:
    """Layer i computes experts (dims.moe is set only where the layout has them)."""
    return dims.moe is not None and dims.moe.sparse[i]

