"""The provenance record in a GGUF's metadata: written as string fields, read back with the limits a
hostile file needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ropeconv import jsontext
from ropeconv.errors import DamagedPlan, InputError
from ropeconv.gguf_io.reader import GgufFile, read_gguf
from ropeconv.gguf_io.types import GGUFValueType
from ropeconv.positions import PositionPlan, plan_from_json
from ropeconv.provenance import BASE_KEY, HUB_KEY, PLAN_KEY

MAX_PLAN_BYTES = 1 << 20  # a plan is a few kilobytes (LongRoPE: two factor lists)
MAX_PATH_BYTES = 4096 + 8  # Linux's PATH_MAX, and the string's length prefix


def gguf_fields(record: dict[str, str]) -> dict[str, tuple[GGUFValueType, str]]:
    """A record (provenance(), say) as GGUF string fields."""
    return {key: (GGUFValueType.STRING, value) for key, value in record.items()}


def recorded_plan_json(src: GgufFile) -> dict[str, Any] | None:
    """The ropeconv.plan a ropeconv GGUF carries, as JSON; None when absent, DamagedPlan when unreadable."""
    field = src.field(PLAN_KEY)
    if field is None:
        return None
    if field.value_type != GGUFValueType.STRING or field.value_bytes > MAX_PLAN_BYTES:
        raise DamagedPlan(f"{src.path}: {PLAN_KEY} is damaged (not a JSON string of at most {MAX_PLAN_BYTES} bytes)")
    try:
        plan = jsontext.loads(field.value, PLAN_KEY)
    except InputError as exc:
        raise DamagedPlan(f"{src.path}: {PLAN_KEY} is damaged ({exc})") from None
    if not isinstance(plan, dict):
        raise DamagedPlan(f"{src.path}: {PLAN_KEY} is damaged (a {type(plan).__name__}, not a plan)")
    return plan


def recorded_hub(src: GgufFile) -> dict[str, str] | None:
    """The Hub base a GGUF extended from a Hub id records (repo_id, revision, commit, file); None when absent or
    unreadable (it is shown by inspect, never needed to verify: the base path beside it is the snapshot's)."""
    field = src.field(HUB_KEY)
    if field is None or field.value_type != GGUFValueType.STRING or field.value_bytes > MAX_PATH_BYTES:
        return None
    try:
        record = jsontext.loads(field.value, HUB_KEY)
    except InputError:
        return None
    if not isinstance(record, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in record.items()):
        return None
    return record


def recorded_plan(src: GgufFile) -> PositionPlan:
    """The plan in ropeconv.plan; InputError when absent, DamagedPlan when it cannot be read back."""
    data = recorded_plan_json(src)
    if data is None:
        raise InputError(f"{src.path}: no {PLAN_KEY} metadata (not written by ropeconv?)")
    try:
        return plan_from_json(data)
    except ValueError as exc:
        raise DamagedPlan(f"{src.path}: {PLAN_KEY} is damaged ({exc})") from None


def recorded(artifact: Path) -> tuple[PositionPlan, Path]:
    """The plan and base a ropeconv GGUF carries."""
    src = read_gguf(artifact)
    return recorded_plan(src), Path(_recorded_base(src))


def _recorded_base(src: GgufFile) -> str:
    """ropeconv.base: a path, so longer than the 256-byte limit of the scalars llama.cpp reads (up to PATH_MAX)."""
    field = src.field(BASE_KEY)
    if field is None:
        return ""
    if field.value_type != GGUFValueType.STRING or field.value_bytes > MAX_PATH_BYTES:
        raise InputError(f"{src.path}: {BASE_KEY} must be a path of at most 4096 bytes; give the base with --base")
    return str(field.value)
