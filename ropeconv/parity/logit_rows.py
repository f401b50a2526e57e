"""Where a probe's logits are kept: in memory, or in a file in the scratch folder when large.

A full-length probe at 32k tokens over a 49k vocabulary is 6.4 GB of float32 logits per side (128k × 128k:
64 GB); rows are written as each chunk is computed and compared a block of rows at a time, so neither side's
logits need to fit in memory at once.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

IN_MEMORY_BYTES = 512 * 1024 * 1024  # above this, rows live in a file (np.memmap) in the scratch folder


def allocate(n_tokens: int, vocab: int, scratch: Path | None = None) -> np.ndarray:
    """float32 [n_tokens, vocab], filled by the caller."""
    if n_tokens * vocab * 4 <= IN_MEMORY_BYTES or scratch is None:
        return np.empty((n_tokens, vocab), dtype=np.float32)
    # the file is unlinked at once: the mapping keeps it alive for as long as the array lives, and no file is
    # left behind if the run is killed
    with tempfile.NamedTemporaryFile(prefix="logits-", suffix=".f32", dir=scratch) as f:
        rows = np.memmap(f.name, dtype=np.float32, mode="w+", shape=(n_tokens, vocab))
    return rows
