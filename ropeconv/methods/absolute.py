"""Learned absolute position tables extended by interpolation — Karypis, McAuley, Karypis 2023, arXiv 2310.14633.

    E'[p] = (1 − α)·E[⌊x⌋] + α·E[⌈x⌉],   x = p·(L − 1)/(L' − 1)   (ropeconv.positions.absolute)

The weights change (one tensor, resampled while streaming); every format then carries the new table
and a context of L' positions.
"""

from __future__ import annotations

from ropeconv.methods.base import Cell, ExtendRequest, GgufDeclaration, Support, resolve_lengths
from ropeconv.positions import AbsolutePlan, AbsoluteScheme

NAME = "absolute"
SUMMARY = "learned position table resampled to the target length (linear interpolation, endpoints kept)"
POSITIONS = ("absolute",)
OPTIONS = ()
CELLS = {
    "safetensors": Cell(Support.EXACT, "resampled table + n_positions / max_position_embeddings"),
    "gguf": Cell(Support.EXACT, "resampled position_embd + context_length (gpt2; llama.cpp has no OPT)"),
    "onnx": Cell(Support.EXACT, "resampled table as the position initializer"),
    "mlx": Cell(Support.REFUSED, "not proven in mlx-lm by ropeconv: mlx-lm has no OPT model, and its GPT-2 is untested; use --to safetensors, gguf or onnx"),
    "openvino": Cell(Support.REFUSED, "not proven in OpenVINO by ropeconv (GPT-2/OPT with a resampled position table); use --to safetensors, gguf or onnx"),
}


def plan(scheme: AbsoluteScheme, request: ExtendRequest) -> AbsolutePlan:
    n = resolve_lengths(scheme, request)
    return AbsolutePlan(method=NAME, table=scheme.table, offset=scheme.offset, original_ctx=n.original_ctx,
                        target_ctx=n.target_ctx, factor=n.factor, params={"factor": n.factor})


def hf_rope_parameters(plan: AbsolutePlan) -> dict:
    return {}


def gguf_declaration(plan: AbsolutePlan, arch) -> GgufDeclaration:
    return GgufDeclaration()
