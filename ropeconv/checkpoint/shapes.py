"""What each family's checkpoint must hold, checked: the dimensions config.json names and the shape every tensor
has in terms of them (transformers' modeling_<family>.py, nn.Linear weights as [out, in]) are data, a FamilyShapes
in each family file (ropeconv/families/<model_type>.py).

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
from collections.abc import Mapping, Sequence
from typing import Any

from ropeconv.checkpoint.safetensors_header import TensorEntry
from ropeconv.errors import InputError
from ropeconv.families import SHAPES
from ropeconv.families.spec import ALWAYS, OPTIONAL, UNTIED, Dim, FamilyShapes, T  # noqa: F401  (shapes' vocabulary)

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
        other = next((k for k in dim.keys if k != key and config.get(k) is not None and config[k] != value), None)
        if other is not None:  # transformers 4.x and 5.x, or two exporters, read different ones of them
            raise InputError(f"config.json: {key} {short(value)} and {other} {short(config[other])} name the same "
                             "dimension and disagree")
        if not _is_count(value):
            raise InputError(f"config.json: {key} must be an integer, got {short(value)}")
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
        sparse = family.sparse(config, i, dims) if family.sparse else False
        for spec in layer_specs:
            if spec.layers != "all" and (spec.layers == "sparse") != sparse:
                continue
            # one expert at a time too: a config claiming a million experts stops at the first one missing
            for e in range(dims["experts"]) if "{e}" in spec.name else (None,):
                _check(spec, spec.name.format(i=i, e=e), by_name, dims, source, family, tied, layer=i)


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
        raise InputError(f"{entry.name} has shape {short(actual)} but config.json implies {shown} ({meaning})")


def _in_keys(expr: str, source: Mapping[str, str]) -> str:
    """heads*head_dim → num_attention_heads*head_dim: the expression in the config's own words."""
    if expr == "*":
        return "any"
    tree = ast.parse(expr, mode="eval")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and source.get(node.id, "").isidentifier():
            node.id = source[node.id]
    return ast.unparse(tree)


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
