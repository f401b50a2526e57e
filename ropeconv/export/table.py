"""The one tensor an absolute-position plan changes: the position table, resampled while streaming."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, TypeGuard

from ropeconv.checkpoint.safetensors_header import DTYPE_BYTES, TensorEntry
from ropeconv.positions import AbsolutePlan, PositionPlan

if TYPE_CHECKING:
    import torch


def changes_table(plan: PositionPlan, entry: TensorEntry) -> TypeGuard[AbsolutePlan]:
    return plan.kind == "absolute" and entry.name == plan.table and plan.target_ctx != plan.original_ctx


def output_entry(plan: PositionPlan, entry: TensorEntry) -> TensorEntry:
    """The entry as the output stores it (the table with offset + target_ctx rows)."""
    if not changes_table(plan, entry):
        return entry
    shape = (plan.offset + plan.target_ctx, *entry.shape[1:])
    return replace(entry, shape=shape, nbytes=math.prod(shape) * DTYPE_BYTES[entry.dtype])


def resampled(plan: AbsolutePlan, entry: TensorEntry, source) -> torch.Tensor:
    """The resampled table in the stored dtype (computed in float64, rounded once)."""
    import torch

    from ropeconv.positions.absolute import resample_table

    table = source.load(entry)
    rows = resample_table(table.double().numpy(), plan)
    return torch.from_numpy(rows).to(table.dtype)
