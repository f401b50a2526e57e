"""The row reorders llama.cpp's converter makes to attention weights, and their inverses: one place for the
GGUF conversion, the LoRA merge into a GGUF base and the decoding of a quantized GGUF's weights.

Each takes a torch tensor whose first axis is the output rows; every one is an exact reorder.
"""

from __future__ import annotations

from ropeconv.errors import InputError


def permute_pairs(w, heads: int):
    """transformers rotates (x_i, x_{i+d/2}); llama.cpp's NORM rope rotates (x_{2i}, x_{2i+1}): reorder each
    head's rows so row 2i holds HF row i and row 2i+1 holds HF row i + d/2."""
    rows = w.shape[0]
    if rows % (2 * heads):
        raise InputError(f"cannot split {rows} q/k rows into {heads} heads of rotary pairs")
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_pairs(w, heads: int):
    """The inverse of permute_pairs."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def qkv_blocks(w, heads: int):
    """GPT-NeoX's fused [q_h, k_h, v_h] per head ─► [all q; all k; all v] as llama.cpp's gptneox splits it."""
    rows = w.shape[0]
    if rows % (3 * heads):
        raise InputError(f"cannot split {rows} fused qkv rows into {heads} heads")
    per_head = w.reshape(heads, 3, rows // heads // 3, *w.shape[1:])
    return per_head.transpose(0, 1).reshape(w.shape)


def unqkv_blocks(w, heads: int):
    """The inverse of qkv_blocks."""
    rows = w.shape[0]
    return w.reshape(3, heads, rows // heads // 3, *w.shape[1:]).transpose(0, 1).reshape(w.shape)
