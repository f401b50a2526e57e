"""JSON as ropeconv reads and writes it: finite numbers only, bounded nesting, one-line errors.

Python's json module accepts NaN, Infinity and 1e400 (→ inf), none of which is JSON or a usable
hyperparameter, and a deeply nested document raises RecursionError (here, or later in whatever walks
it). Every JSON (and YAML) document ropeconv reads from a user goes through `loads` or `check_tree`,
so a hostile file is one InputError naming the file and, for a bad number, its key path; every JSON
ropeconv writes goes through `dumps`, which refuses to write a non-finite number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from ropeconv.errors import InputError

# Real configs, safetensors headers and recipes nest 4–6 levels; deep enough for any of them, shallow
# enough that no recursive consumer (pydantic, copy, json.dumps) can hit the interpreter's limit.
MAX_DEPTH = 64
_PLAIN_LEAVES = frozenset((str, int, bool, type(None)))  # leaves check_tree has nothing to refuse in (not float)


class _NonFinite(float):
    """Stands in for NaN/Infinity/overflowing literals until the walk names their key."""

    literal: str


def _constant(token: str) -> _NonFinite:
    value = _NonFinite(token.replace("Infinity", "inf"))
    value.literal = token
    return value


def _number(token: str) -> float:
    value = float(token)
    return value if math.isfinite(value) else _constant(token)


def loads(text: str | bytes, where: str) -> Any:
    """Parse `text`; InputError("{where}: …") for bad JSON, nesting beyond MAX_DEPTH or a non-finite number."""
    try:
        data = json.loads(text, parse_constant=_constant, parse_float=_number)
    except RecursionError:
        raise InputError(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
    except UnicodeDecodeError:
        raise InputError(f"{where}: not UTF-8 text") from None
    except ValueError as exc:
        raise InputError(f"{where}: not valid JSON ({exc})") from None
    check_tree(data, where)
    return data


def check_tree(data: Any, where: str, *, finite: bool = True, max_nodes: int | None = None) -> None:
    """Refuse nesting beyond MAX_DEPTH, non-finite floats (when `finite`) and, for YAML whose aliases can
    share nodes, more than `max_nodes` nodes in the expanded tree. Iterative: the walk itself cannot recurse."""
    stack: list[tuple[Any, tuple, int]] = [(data, (), 0)]
    nodes = 0
    while stack:
        node, path, depth = stack.pop()
        nodes += 1
        if max_nodes is not None and nodes > max_nodes:
            raise InputError(f"{where}: more than {max_nodes} values once aliases are expanded")
        items: Iterable[tuple[Any, Any]]
        values: Iterable[Any]
        if isinstance(node, dict):
            items, values = node.items(), node.values()
        elif isinstance(node, list):
            items, values = enumerate(node), node
        else:
            if finite and isinstance(node, float) and not math.isfinite(node):
                shown = getattr(node, "literal", repr(node))
                raise InputError(f"{where}: {key_path(path)} is {shown}, not a finite number")
            continue
        if depth >= MAX_DEPTH:
            raise InputError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        if max_nodes is None and _plain(values, depth + 1):
            continue  # nothing below to check (a tokenizer's 50k-entry vocabulary, its merges): not walked one by one
        stack.extend((value, path + (key,), depth + 1) for key, value in items)


def _plain(values, depth: int) -> bool:
    """Whether every value is a plain leaf, or a list of plain leaves still within MAX_DEPTH (["a", "b"] merges)."""
    for value in values:
        kind = type(value)
        if kind in _PLAIN_LEAVES or (kind is list and depth < MAX_DEPTH
                                     and all(type(item) in _PLAIN_LEAVES for item in value)):
            continue
        return False
    return True


def key_path(path: tuple) -> str:
    """("rope_scaling", "factor") → rope_scaling.factor; list indices as [i]."""
    out = ""
    for part in path:
        part = part if isinstance(part, int) else str(part)[:60]  # a hostile key may be megabytes long
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return (out[:200] + "…" if len(out) > 200 else out) or "(top)"


def dumps(data: Any, what: str, **kwargs: Any) -> str:
    """json.dumps that never writes NaN/Infinity (not JSON): a non-finite number is an InputError naming `what`."""
    try:
        return json.dumps(data, allow_nan=False, **kwargs)
    except ValueError as exc:
        raise InputError(f"{what}: refusing to write a non-finite number, which is not JSON ({exc})") from None


def is_utf8(text: str) -> bool:
    """Encodes as UTF-8: no lone surrogate (os.fsdecode's escapes for undecodable bytes, or JSON's "\\ud800",
    which Rust's safetensors refuses to read)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable(text: str) -> str:
    """Text that encodes as UTF-8: a path's undecodable bytes (surrogate escapes, os.fsdecode's form) as \\xNN."""
    if is_utf8(text):
        return text
    return "".join(_escape(c) if "\ud800" <= c <= "\udfff" else c for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"
