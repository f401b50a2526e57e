"""What each family's checkpoint must hold, as data: the dimensions config.json names and the shape every
tensor has in terms of them (transformers' modeling_<family>.py, nn.Linear weights as [out, in]).

A checkpoint is checked against its config before any tensor is read or any model is built: a config
that claims `vocab_size: 100000000`, `head_dim: 2**40` or a million layers is refused by the first
tensor that disagrees, instead of by the allocator. So are a missing tensor, transposed weights, a
boolean or string where a count belongs, and key/value heads that do not divide the query heads.

Shapes are small expressions over the dimensions ("heads*head_dim, hidden"); "*" is any size (a
learned position table, whose rows checkpoint/position_config.py checks against the config).
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ropeconv.checkpoint.safetensors_header import TensorEntry
from ropeconv.errors import InputError

ALWAYS, OPTIONAL, UNTIED = "always", "optional", "untied"  # UNTIED: needed unless tie_word_embeddings


@dataclass(frozen=True)
class Dim:
    keys: tuple[str, ...]  # config keys tried in order; the first one present and not null wins
    default: str | None = None  # expression over earlier dims when no key is present (None: the key is needed)


@dataclass(frozen=True)
class T:
    name: str  # "{i}" stands for each layer index
    shape: str  # comma-separated expressions
    need: str = ALWAYS


@dataclass(frozen=True)
class FamilyShapes:
    model_type: str
    dims: tuple[tuple[str, Dim], ...]  # resolved in order; "layers" is the layer count
    tensors: tuple[T, ...]
    divides: tuple[tuple[str, str], ...] = ()  # (a, b): a must divide b
    tied_default: bool = False  # transformers' tie_word_embeddings default for the family
    optional_prefix: str | None = None  # checkpoints saved from the bare model lack it


def _linear(name: str, out: str, inp: str, bias: str | None = None) -> tuple[T, ...]:
    """nn.Linear: weight [out, in]; its bias, when the checkpoint has one, [out]."""
    return (T(f"{name}.weight", f"{out}, {inp}"), T(f"{name}.bias", bias or out, OPTIONAL))


def _norm(name: str, need: str = ALWAYS, bias: bool = False) -> tuple[T, ...]:
    return (T(f"{name}.weight", "hidden", need),) + ((T(f"{name}.bias", "hidden", need),) if bias else ())


_VOCAB = ("vocab", Dim(("vocab_size",)))
_LLAMA_DIMS = (
    ("hidden", Dim(("hidden_size",))),
    ("layers", Dim(("num_hidden_layers",))),
    ("heads", Dim(("num_attention_heads",))),
    ("kv_heads", Dim(("num_key_value_heads",), "heads")),
    ("head_dim", Dim(("head_dim",), "hidden // heads")),
    ("inter", Dim(("intermediate_size",))),
    _VOCAB,
)
_L = "model.layers.{i}."
_LLAMA = (
    T("model.embed_tokens.weight", "vocab, hidden"),
    *_linear(_L + "self_attn.q_proj", "heads*head_dim", "hidden"),
    *_linear(_L + "self_attn.k_proj", "kv_heads*head_dim", "hidden"),
    *_linear(_L + "self_attn.v_proj", "kv_heads*head_dim", "hidden"),
    *_linear(_L + "self_attn.o_proj", "hidden", "heads*head_dim"),
    *_linear(_L + "mlp.gate_proj", "inter", "hidden"),
    *_linear(_L + "mlp.up_proj", "inter", "hidden"),
    *_linear(_L + "mlp.down_proj", "hidden", "inter"),
    *_norm(_L + "input_layernorm"),
    *_norm(_L + "post_attention_layernorm"),
    *_norm("model.norm"),
    T("lm_head.weight", "vocab, hidden", UNTIED),
)
_GQA = (("kv_heads", "heads"),)  # transformers repeats each key/value head heads/kv_heads times
# Qwen3: q/k RMSNorm over each head (weights [head_dim]); Qwen3Config's head_dim defaults to 128
_QWEN3_DIMS = tuple((n, Dim(("head_dim",), "128")) if n == "head_dim" else (n, d) for n, d in _LLAMA_DIMS)
_QWEN3 = _LLAMA + (T(_L + "self_attn.q_norm.weight", "head_dim"), T(_L + "self_attn.k_norm.weight", "head_dim"))
# OLMo 2: no norm before attention or MLP, norms after both; q/k RMSNorm over the whole projection
_OLMO2 = tuple(t for t in _LLAMA if ".input_layernorm." not in t.name) + (
    T(_L + "self_attn.q_norm.weight", "heads*head_dim"), T(_L + "self_attn.k_norm.weight", "kv_heads*head_dim"),
    *_norm(_L + "post_feedforward_layernorm"),
)
_GEMMA_DIMS = tuple((n, Dim(("head_dim",), "256")) if n == "head_dim" else (n, d) for n, d in _LLAMA_DIMS)
_H = "transformer.h.{i}."
_NEOX = "gpt_neox.layers.{i}."
_MPT = "transformer.blocks.{i}."
_OPT = "model.decoder.layers.{i}."

SHAPES: dict[str, FamilyShapes] = {
    f.model_type: f
    for f in (
        FamilyShapes("llama", _LLAMA_DIMS, _LLAMA, _GQA),
        FamilyShapes("mistral", _LLAMA_DIMS, _LLAMA, _GQA),
        FamilyShapes("qwen2", _LLAMA_DIMS, _LLAMA, _GQA),
        FamilyShapes("qwen3", _QWEN3_DIMS, _QWEN3, _GQA),
        FamilyShapes("olmo2", _LLAMA_DIMS, _OLMO2, _GQA),
        FamilyShapes("smollm3", _LLAMA_DIMS, _LLAMA, _GQA, tied_default=True),
        FamilyShapes("gemma", _GEMMA_DIMS, _LLAMA, _GQA, tied_default=True),
        FamilyShapes(
            "gemma2", _GEMMA_DIMS,
            _LLAMA + _norm(_L + "pre_feedforward_layernorm") + _norm(_L + "post_feedforward_layernorm"),
            _GQA, tied_default=True,
        ),
        # --- gemma3 ---
        # gemma2's sandwich norms plus q/k RMSNorm per head ([head_dim])
        FamilyShapes(
            "gemma3_text", _GEMMA_DIMS,
            _LLAMA + _norm(_L + "pre_feedforward_layernorm") + _norm(_L + "post_feedforward_layernorm")
            + (T(_L + "self_attn.q_norm.weight", "head_dim"), T(_L + "self_attn.k_norm.weight", "head_dim")),
            _GQA, tied_default=True,
        ),
        # --- end gemma3 ---
        FamilyShapes(
            "phi3", _LLAMA_DIMS,
            (
                T("model.embed_tokens.weight", "vocab, hidden"),
                *_linear(_L + "self_attn.qkv_proj", "(heads + 2*kv_heads)*head_dim", "hidden"),
                *_linear(_L + "self_attn.o_proj", "hidden", "heads*head_dim"),
                *_linear(_L + "mlp.gate_up_proj", "2*inter", "hidden"),
                *_linear(_L + "mlp.down_proj", "hidden", "inter"),
                *_norm(_L + "input_layernorm"),
                *_norm(_L + "post_attention_layernorm"),
                *_norm("model.norm"),
                T("lm_head.weight", "vocab, hidden", UNTIED),
            ),
            _GQA,
        ),
        FamilyShapes(
            "gpt_neox",
            (("hidden", Dim(("hidden_size",))), ("layers", Dim(("num_hidden_layers",))),
             ("heads", Dim(("num_attention_heads",))), ("inter", Dim(("intermediate_size",))), _VOCAB),
            (
                T("gpt_neox.embed_in.weight", "vocab, hidden"),
                *_norm(_NEOX + "input_layernorm", bias=True),
                *_norm(_NEOX + "post_attention_layernorm", bias=True),
                *_linear(_NEOX + "attention.query_key_value", "3*hidden", "hidden"),
                *_linear(_NEOX + "attention.dense", "hidden", "hidden"),
                *_linear(_NEOX + "mlp.dense_h_to_4h", "inter", "hidden"),
                *_linear(_NEOX + "mlp.dense_4h_to_h", "hidden", "inter"),
                *_norm("gpt_neox.final_layer_norm", bias=True),
                T("embed_out.weight", "vocab, hidden", UNTIED),
            ),
            (("heads", "hidden"),),
        ),
        FamilyShapes(
            "bloom",
            (("hidden", Dim(("hidden_size", "n_embed"))), ("layers", Dim(("n_layer", "num_hidden_layers"))),
             ("heads", Dim(("n_head", "num_attention_heads"))), _VOCAB),
            (
                T("transformer.word_embeddings.weight", "vocab, hidden"),
                *_norm("transformer.word_embeddings_layernorm", bias=True),
                *_norm(_H + "input_layernorm", bias=True),
                *_linear(_H + "self_attention.query_key_value", "3*hidden", "hidden"),
                *_linear(_H + "self_attention.dense", "hidden", "hidden"),
                *_norm(_H + "post_attention_layernorm", bias=True),
                *_linear(_H + "mlp.dense_h_to_4h", "4*hidden", "hidden"),
                *_linear(_H + "mlp.dense_4h_to_h", "hidden", "4*hidden"),
                *_norm("transformer.ln_f", bias=True),
                T("lm_head.weight", "vocab, hidden", UNTIED),
            ),
            (("heads", "hidden"),), tied_default=True, optional_prefix="transformer.",
        ),
        FamilyShapes(
            "mpt",
            (("hidden", Dim(("d_model",))), ("layers", Dim(("n_layers",))), ("heads", Dim(("n_heads",))), _VOCAB),
            (
                T("transformer.wte.weight", "vocab, hidden"),
                *_norm(_MPT + "norm_1"),
                *_linear(_MPT + "attn.Wqkv", "3*hidden", "hidden"),
                *_linear(_MPT + "attn.out_proj", "hidden", "hidden"),
                *_norm(_MPT + "norm_2"),
                # transformers' MptMLP is 4·d_model wide whatever expansion_ratio says
                *_linear(_MPT + "ffn.up_proj", "4*hidden", "hidden"),
                *_linear(_MPT + "ffn.down_proj", "hidden", "4*hidden"),
                *_norm("transformer.norm_f"),
                T("lm_head.weight", "vocab, hidden", UNTIED),
            ),
            (("heads", "hidden"),), tied_default=True, optional_prefix="transformer.",
        ),
        FamilyShapes(
            "gpt2",
            (("hidden", Dim(("n_embd", "hidden_size"))), ("layers", Dim(("n_layer", "num_hidden_layers"))),
             ("heads", Dim(("n_head", "num_attention_heads"))), ("inter", Dim(("n_inner",), "4*hidden")), _VOCAB),
            (
                T("transformer.wte.weight", "vocab, hidden"),
                T("transformer.wpe.weight", "*, hidden"),
                *_norm(_H + "ln_1", bias=True),
                # Conv1D stores its weight [in, out]
                T(_H + "attn.c_attn.weight", "hidden, 3*hidden"), T(_H + "attn.c_attn.bias", "3*hidden"),
                T(_H + "attn.c_proj.weight", "hidden, hidden"), T(_H + "attn.c_proj.bias", "hidden"),
                *_norm(_H + "ln_2", bias=True),
                T(_H + "mlp.c_fc.weight", "hidden, inter"), T(_H + "mlp.c_fc.bias", "inter"),
                T(_H + "mlp.c_proj.weight", "inter, hidden"), T(_H + "mlp.c_proj.bias", "hidden"),
                *_norm("transformer.ln_f", bias=True),
                T("lm_head.weight", "vocab, hidden", UNTIED),
            ),
            (("heads", "hidden"),), tied_default=True, optional_prefix="transformer.",
        ),
        FamilyShapes(
            "opt",
            (("hidden", Dim(("hidden_size",))), ("layers", Dim(("num_hidden_layers",))),
             ("heads", Dim(("num_attention_heads",))), ("inter", Dim(("ffn_dim",))),
             ("proj", Dim(("word_embed_proj_dim",), "hidden")), _VOCAB),
            (
                T("model.decoder.embed_tokens.weight", "vocab, proj"),
                T("model.decoder.embed_positions.weight", "*, hidden"),
                T("model.decoder.project_in.weight", "hidden, proj", OPTIONAL),  # when proj ≠ hidden
                T("model.decoder.project_out.weight", "proj, hidden", OPTIONAL),
                *_linear(_OPT + "self_attn.q_proj", "hidden", "hidden"),
                *_linear(_OPT + "self_attn.k_proj", "hidden", "hidden"),
                *_linear(_OPT + "self_attn.v_proj", "hidden", "hidden"),
                *_linear(_OPT + "self_attn.out_proj", "hidden", "hidden"),
                *_linear(_OPT + "fc1", "inter", "hidden"),
                *_linear(_OPT + "fc2", "hidden", "inter"),
                # LayerNorms without elementwise affine, and 350m's missing final norm, hold no tensors
                *_norm(_OPT + "self_attn_layer_norm", OPTIONAL, bias=True),
                *_norm(_OPT + "final_layer_norm", OPTIONAL, bias=True),
                *_norm("model.decoder.final_layer_norm", OPTIONAL, bias=True),
                T("lm_head.weight", "vocab, proj", UNTIED),
            ),
            (("heads", "hidden"),), tied_default=True, optional_prefix="model.",
        ),
    )
}


# ---------------------------------------------------------------------------------------------- checking

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def evaluate(expr: str, dims: Mapping[str, int]) -> int:
    """An integer expression over dims: names, integer literals, + - * // and parentheses only."""

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Name):
            return dims[node.id]
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        raise ValueError(f"unsupported expression {expr!r}")

    return ev(ast.parse(expr, mode="eval").body)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_dims(config: Mapping[str, Any], family: FamilyShapes) -> tuple[dict[str, int], dict[str, str]]:
    """Each dimension's value, and the config key (or default expression) it came from."""
    dims: dict[str, int] = {}
    source: dict[str, str] = {}
    for name, dim in family.dims:
        key = next((k for k in dim.keys if config.get(k) is not None), None)
        if key is None:
            if dim.default is None:
                raise InputError(f"config.json: needs {' or '.join(dim.keys)} ({family.model_type})")
            dims[name], source[name] = evaluate(dim.default, dims), dim.default
            continue
        value = config[key]
        if not _is_count(value):
            raise InputError(f"config.json: {key} must be an integer, got {_short(value)}")
        if value < 1:
            why = " (a model with no layers is not a model)" if name == "layers" else ""
            raise InputError(f"config.json: {key} must be at least 1, got {value}{why}")
        dims[name], source[name] = value, key
    for a, b in family.divides:
        if dims[b] % dims[a]:
            raise InputError(f"config.json: {source[b]} {dims[b]} is not a multiple of {source[a]} {dims[a]} "
                             f"(transformers' {family.model_type} needs it)")
    return dims, source


def check_tensors(config: Mapping[str, Any], model_type: str, tensors: Sequence[TensorEntry]) -> None:
    """Refuse a config that disagrees with the tensor index: every tensor the family needs is there with
    the shape the config implies (optional ones are checked when present)."""
    family = SHAPES.get(model_type)
    if family is None:
        return
    dims, source = resolve_dims(config, family)
    by_name = {t.name: t for t in tensors}
    tied = config.get("tie_word_embeddings", family.tied_default)
    layer_specs = [t for t in family.tensors if "{i}" in t.name]
    model_specs = [t for t in family.tensors if "{i}" not in t.name]
    for spec in model_specs:
        _check(spec, spec.name, by_name, dims, source, family, tied)
    # one layer at a time: a config claiming a million layers stops at the first one that is not there
    for i in range(dims["layers"]):
        for spec in layer_specs:
            _check(spec, spec.name.format(i=i), by_name, dims, source, family, tied, layer=i)


def _check(spec: T, name: str, by_name: Mapping[str, TensorEntry], dims: Mapping[str, int],
           source: Mapping[str, str], family: FamilyShapes, tied: Any, layer: int | None = None) -> None:
    entry = by_name.get(name)
    if entry is None and family.optional_prefix and name.startswith(family.optional_prefix):
        entry = by_name.get(name[len(family.optional_prefix):])
    if entry is None:
        if spec.need == ALWAYS or (spec.need == UNTIED and tied is False):
            why = f" (config.json: {source['layers']} {dims['layers']})" if layer is not None else ""
            raise InputError(f"checkpoint has no {name}, which a {family.model_type} model needs{why}")
        return
    parts = [p.strip() for p in spec.shape.split(",")]
    expected = [None if p == "*" else evaluate(p, dims) for p in parts]
    actual = list(entry.shape)
    if len(actual) != len(expected) or any(e is not None and e != a for e, a in zip(expected, actual)):
        shown = [("any" if e is None else e) for e in expected]
        meaning = ", ".join(_in_keys(p, source) for p in parts)
        raise InputError(f"{entry.name} has shape {_short(actual)} but config.json implies {shown} ({meaning})")


def _in_keys(expr: str, source: Mapping[str, str]) -> str:
    """heads*head_dim → num_attention_heads*head_dim: the expression in the config's own words."""
    if expr == "*":
        return "any"
    tree = ast.parse(expr, mode="eval")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and source.get(node.id, "").isidentifier():
            node.id = source[node.id]
    return ast.unparse(tree)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
