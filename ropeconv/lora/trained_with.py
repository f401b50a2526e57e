"""The rope scaling an adapter was trained under, against the one requested: LoRA weights tuned for one
position scheme computing under another is a silent quality loss, so a mismatch is an error unless the
user forces it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ropeconv.errors import InputError
from ropeconv.lora.adapter import ROPE_RECORD, Adapter


def parse_trained_with(text: str) -> dict[str, Any]:
    """--lora-trained-with METHOD[:FACTOR], e.g. yarn:16, linear:4, none."""
    method, _, factor = text.partition(":")
    if not method.strip():
        raise InputError(f"--lora-trained-with {text!r}: expected METHOD[:FACTOR], e.g. yarn:16")
    record: dict[str, Any] = {"method": method.strip()}
    if factor:
        try:
            record["factor"] = float(factor)
        except ValueError:
            raise InputError(f"--lora-trained-with {text!r}: {factor!r} is not a number") from None
    return record


def check_trained_with(adapter: Adapter, given: Mapping[str, Any] | None, plan) -> None:
    """Raise unless the adapter's recorded (or given) scaling is the plan's: method, factor, parameters."""
    record = given or adapter.trained_with
    if record is None:
        raise InputError(f"--lora {adapter.path}: no {ROPE_RECORD} says which rope scaling it was trained under; "
                         f"give it (--lora-trained-with {plan.method}:{plan.factor:g} if that is what it was) or "
                         "pass --force-method")
    want = f"{plan.method} ×{plan.factor:g}"
    method, factor = record.get("method"), record.get("factor")
    problems = []
    if method != plan.method:
        problems.append(f"method {method}")
    if isinstance(factor, (int, float)) and not math.isclose(float(factor), plan.factor, rel_tol=1e-9):
        problems.append(f"factor {float(factor):g}")
    for key, value in (record.get("params") or {}).items():
        if key in plan.params and plan.params[key] != value and not (
                isinstance(value, (int, float)) and isinstance(plan.params[key], (int, float))
                and math.isclose(float(value), float(plan.params[key]), rel_tol=1e-9)):
            problems.append(f"{key} {value}")
    if problems:
        source = "--lora-trained-with" if given else ROPE_RECORD
        raise InputError(f"--lora {adapter.path} was trained with {', '.join(problems)} ({source}), not {want}; "
                         "extend with the scaling it was trained under, or pass --force-method")


def checked_adapters(paths, trained_with: str | None, force_method: bool, plan) -> list[Adapter]:
    """--lora directories read, each checked against the plan's scaling unless forced."""
    from ropeconv.lora.adapter import read_adapter

    adapters = [read_adapter(p) for p in paths]
    given = parse_trained_with(trained_with) if trained_with else None
    if not force_method:
        for adapter in adapters:
            check_trained_with(adapter, given, plan)
    return adapters
