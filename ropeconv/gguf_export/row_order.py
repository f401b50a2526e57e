"""The row reorders llama.cpp's converter makes to attention weights, and their inverses: one place for the
GGUF conversion, the LoRA merge into a GGUF base and the decoding of a quantized GGUF's weights.

Each takes a torch tensor whose first axis is the output rows; every one is an exact reorder.
"""

from __future__ import annotations

from ropeconv.errors import InputError


def _pair_rows(rows: int, heads: int) -> int:
    """Rows per head of a q/k projection split into heads of rotary pairs."""
    if rows % (2 * heads):
        raise InputError(f"cannot split {rows} q/k rows into {heads} heads of rotary pairs")
    return rows // heads


def _qkv_rows(rows: int, heads: int) -> int:
    """Rows of each of q, k and v per head of a fused qkv projection."""
    if rows % (3 * heads):
        raise InputError(f"cannot split {rows} fused qkv rows into {heads} heads")
    return rows // heads // 3


def permute_pairs(w, heads: int):
    """transformers rotates (x_i, x_{i+d/2}); llama.cpp's NORM rope rotates (x_{2i}, x_{2i+1}): reorder each
    head's rows so row 2i holds HF row i and row 2i+1 holds HF row i + d/2."""
    per_head = _pair_rows(w.shape[0], heads)
    return w.reshape(heads, 2, per_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_pairs(w, heads: int):
    """The inverse of permute_pairs."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def qkv_blocks(w, heads: int):
    """GPT-NeoX's fused [q_h, k_h, v_h] per head ─► [all q; all k; all v] as llama.cpp's gptneox splits it."""
    per_head = w.reshape(heads, 3, _qkv_rows(w.shape[0], heads), *w.shape[1:])
    return per_head.transpose(0, 1).reshape(w.shape)


def unqkv_blocks(w, heads: int):
    """The inverse of qkv_blocks."""
    rows = w.shape[0]
    return w.reshape(3, heads, rows // heads // 3, *w.shape[1:]).transpose(0, 1).reshape(w.shape)


def row_blocks(op: str | None, rows: int, heads: int) -> list[tuple[int, int, bool]]:
    """The reorder op ("permute_q"/"permute_k": permute_pairs, "qkv_blocks": qkv_blocks, None: none) as the source's
    row blocks in output order, for a writer that reads rows from the file: (first row, rows, whether the block's
    rotary pairs are interleaved as permute_pairs does to each head)."""
    if op in ("permute_q", "permute_k"):
        per_head = _pair_rows(rows, heads)
        return [(h * per_head, per_head, True) for h in range(heads)]
    if op == "qkv_blocks":
        per_part = _qkv_rows(rows, heads)
        return [((h * 3 + part) * per_part, per_part, False) for part in range(3) for h in range(heads)]
    return [(0, rows, False)]
