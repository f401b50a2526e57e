"""config.json's values checked against the family's typed description (Family.values, and its dimensions: positive
integers) when a checkpoint is loaded, so that extend, verify, eval and search all refuse, in one line and before any
byte is written, a value the family's transformers config class rejects (5.x's strict classes: a float key takes no
integer, a bool key no 0, 1 or "yes", a count no list) or one that makes the math undefined or that llama.cpp's loader
aborts on (a negative norm epsilon: GGML_ASSERT, exit 134).

Only the keys config.json states are checked: a key it omits takes the class default (Family.config_defaults), and
the plans check what they derive from the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ropeconv.checkpoint.shapes import resolve_dims, short
from ropeconv.errors import InputError
from ropeconv.families.spec import BOOL, FLOAT, INT, STR, Family, Value, with_class_defaults

# Python's type of each kind as JSON gives it (a bool is an int to Python: told apart below)
_TYPES: dict[str, type[Any]] = {INT: int, FLOAT: float, BOOL: bool, STR: str}
_NAMES = {INT: "an integer", FLOAT: "a float", BOOL: "true or false", STR: "a string"}


def described(family: Family) -> tuple[Value, ...]:
    """Every key the family reads with its Value: its own, then its dimensions and tie_word_embeddings (a family's own
    Value of a dimension key wins)."""
    own = {v.key for v in family.values}
    derived = [Value(k, INT, least=1, null=dim.default is not None)
               for _, dim in family.shapes.dims for k in dim.keys if k not in own]
    if "tie_word_embeddings" not in own:
        derived.append(Value("tie_word_embeddings", BOOL))
    return family.values + tuple(derived)


def check_values(config: Mapping[str, Any], family: Family, *, defaults: bool = False) -> None:
    """Refuse the first value config.json states that its Value does not take; defaults: the class defaults of the
    keys it omits too (Family.config_defaults' plain values: what a plan writes from them, e.g. Qwen3-MoE's top 8 of
    fewer experts, which llama.cpp's loader aborts on)."""
    dims, _ = resolve_dims(config, family.shapes)
    effective = with_class_defaults(config, family) if defaults else config
    for value in described(family):
        if value.key in effective:
            in_use = value.only_if is None or effective.get(value.only_if) is True
            check_value(effective[value.key], value if in_use else replace(value, least=None, above=None, most=None),
                        family.model_type, dims, stated=value.key in config)


def check_value(found: Any, value: Value, model_type: str, dims: Mapping[str, int], stated: bool = True) -> None:
    subject = (f"config.json: {value.key}" if stated else
               f"config.json omits {value.key}, and transformers' {model_type} default")
    if found is None:
        if not value.null:
            raise InputError(f"{subject} null is of the wrong kind: {model_type} takes {takes(value)}")
        return
    if value.per_layer or value.listed:
        if not isinstance(found, list):
            raise InputError(f"{subject} {short(found)} is of the wrong kind: {model_type} takes {takes(value)}")
        if value.per_layer and len(found) != dims["layers"]:
            raise InputError(f"config.json: {len(found)} {value.key} for num_hidden_layers {dims['layers']}")
        for item in found:
            _check_one(item, value, model_type, dims, subject)
        return
    _check_one(found, value, model_type, dims, subject)


def _check_one(found: Any, value: Value, model_type: str, dims: Mapping[str, int], subject: str) -> None:
    if not isinstance(found, _TYPES[value.kind]) or (value.kind == INT and isinstance(found, bool)):
        raise InputError(f"{subject} {short(found)} is of the wrong kind: {model_type} takes {takes(value)}")
    if value.kind in (INT, FLOAT) and not _in_range(found, value, dims):
        why = f" ({value.why})" if value.why else ""
        raise InputError(f"{subject} {short(found)} is out of range: {model_type} takes {takes(value, dims)}{why}")
    if value.choices and found not in value.choices:
        raise InputError(f"{subject} {short(found)} is not one of {', '.join(value.choices)}")


def _in_range(found: float, value: Value, dims: Mapping[str, int]) -> bool:
    high = value.bound_high
    return (math.isfinite(found)
            and (value.least is None or found >= value.least)
            and (value.above is None or found > value.above)
            and (high is None or found <= high)
            and (value.at_most is None or found <= dims[value.at_most]))


def takes(value: Value, dims: Mapping[str, int] | None = None) -> str:
    """What the Value takes, in words: "a float > 0, ≤ 3.40282e+38", "a list of num_hidden_layers items, each an
    integer ≥ 0, ≤ 1 or null"."""
    bounds = []
    if value.least is not None:
        bounds.append(f"≥ {value.least:g}")
    if value.above is not None:
        bounds.append(f"> {value.above:g}")
    if value.at_most is not None:
        bounds.append(f"≤ {value.at_most} ({dims[value.at_most]})" if dims else f"≤ {value.at_most}")
    elif value.bound_high is not None:
        bounds.append(f"≤ {value.bound_high:.0f}" if value.kind == INT else f"≤ {value.bound_high:g}")
    if value.choices:
        bounds.append(f"one of {', '.join(value.choices)}")
    one = " ".join([_NAMES[value.kind]] + [", ".join(bounds)] if bounds else [_NAMES[value.kind]])
    if value.per_layer or value.listed:
        count = "num_hidden_layers" if value.per_layer else "any number of"
        one = f"a list of {count} items, each {one}"
    return one + (" or null" if value.null else "")

