"""The base's position scheme from config.json (and, for learned tables, the tensor index): RoPE, ALiBi or
an absolute position table, as the architecture table says."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ropeconv.alibi_patch import KEY as ALIBI_KEY
from ropeconv.checkpoint.rope_config import read_scheme
from ropeconv.checkpoint.safetensors_header import TensorEntry
from ropeconv.errors import InputError
from ropeconv.families.lookup import ArchSpec
from ropeconv.positions import AbsoluteScheme, AlibiScheme, PositionScheme
from ropeconv.positions.alibi import MAX_BIAS

_HEAD_KEYS = ("num_attention_heads", "n_head", "n_heads")


def read_position_scheme(config: Mapping[str, Any], arch: ArchSpec,
                         tensors: Sequence[TensorEntry]) -> PositionScheme:
    if arch.position == "alibi":
        return _alibi(config, arch)
    if arch.position == "absolute":
        return _absolute(config, arch, tensors)
    return read_scheme(config, arch)


def _length(config: Mapping[str, Any], arch: ArchSpec) -> int | None:
    value = config.get(arch.ctx_key) if arch.ctx_key else None
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InputError(f"config.json: {arch.ctx_key} must be a positive integer, got {str(value)[:40]}")
    return value


def _alibi(config: Mapping[str, Any], arch: ArchSpec) -> AlibiScheme:
    heads = next((config[k] for k in _HEAD_KEYS if k in config), None)
    if not isinstance(heads, int) or isinstance(heads, bool) or heads <= 0:
        raise InputError("config.json: the number of attention heads must be a positive integer")
    attn = config.get("attn_config") or {}
    if not isinstance(attn, dict):
        raise InputError("config.json: attn_config must be an object")
    if attn.get("alibi") is False:
        raise InputError(f"{arch.model_type} with attn_config.alibi false: transformers' {arch.model_type} computes "
                         "ALiBi regardless; this checkpoint is not supported")
    max_bias = attn.get("alibi_bias_max", MAX_BIAS)
    if max_bias != MAX_BIAS:
        raise InputError(f"{arch.model_type} with alibi_bias_max {str(max_bias)[:40]}: transformers ignores it and uses "
                         f"{MAX_BIAS:g} (llama.cpp and MosaicML's code do not), so the model is ambiguous")
    declared = _length(config, arch)
    existing = config.get(ALIBI_KEY)
    original = declared
    if isinstance(existing, dict) and isinstance(existing.get("original_ctx"), int):
        original = existing["original_ctx"]
    return AlibiScheme(n_heads=heads, original_ctx=original, declared_ctx=declared or 0, max_bias=float(max_bias),
                       existing_scaling=existing or None)


def _absolute(config: Mapping[str, Any], arch: ArchSpec, tensors: Sequence[TensorEntry]) -> AbsoluteScheme:
    assert arch.table
    # openai-community/gpt2 stores its tensors without the "transformer." prefix
    names = {arch.table, arch.table.split(".", 1)[-1]}
    found = [t for t in tensors if t.name in names]
    if len(found) != 1:
        raise InputError(f"{arch.model_type}: expected one position table {arch.table!r} among the tensors, "
                         f"found {len(found)}")
    entry = found[0]
    if len(entry.shape) != 2 or entry.shape[0] <= arch.table_offset:
        raise InputError(f"{entry.name}: a position table must be [rows, hidden], got {list(entry.shape)}")
    rows = entry.shape[0] - arch.table_offset
    declared = _length(config, arch)
    if declared is not None and declared != rows:
        raise InputError(f"config.json: {arch.ctx_key} {declared} but {entry.name} holds {rows} positions")
    return AbsoluteScheme(table=entry.name, offset=arch.table_offset, original_ctx=rows, declared_ctx=rows)
