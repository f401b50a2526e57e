"""PoSE sampling (Zhu et al. 2023, arXiv 2309.10400): long relative distances inside a short training window.

A training sample is `Lc` = train_ctx tokens, split into N = 2 chunks whose position ids are shifted by a skip
bias so that relative distances up to `Lt` − 1 (Lt = target_ctx) occur inside the `Lc`-token window. This is
the official code's `train_preprocess_function_pose` (dwzhu-pku/PoSE, src/train_pose.py, v2 revision), for a
document x of `Lx` ≥ Lc tokens; `randint` includes both ends:

    rt1 = randint(1, (Lc + 1) // 2)           # length of chunk 1 (chunk 2 gets Lc − rt1)
    rt2 = randint(Lc, Lx)                     # end of chunk 2's content in the document
    lt2 = rt2 − (Lc − rt1)                    # start of chunk 2's content (≥ rt1: the chunks never overlap)
    content   = x[0 : rt1] + x[lt2 : rt2]     # v_1 = 0: chunk 1 is the document's head
    r  = randint(0, Lt − Lc)                  # skip bias u_2 (u_1 = 0: the v2 fix "lt = 0")
    positions = [0, …, rt1 − 1] + [r + rt1, …, r + Lc − 1]

so positions are strictly increasing, the first is 0, the last is r + Lc − 1 ≤ Lt − 1, and the largest
relative distance in the sample, r + Lc − 1, reaches Lt − 1 when r = Lt − Lc. Paper §3.2 in its notation:
chunk lengths l_i (Σ l_i = Lc), st_i = Σ_{k<i} l_k, u_i ~ U{u_{i−1} … Lt − Lc}, positions {u_i + st_i, …,
u_i + st_i + l_i − 1}. The model is then trained with the chosen RoPE scaling at factor Lt / L (L the base's
pretraining context) on those ids; at inference positions are the ordinary 0, 1, 2, ….

Pure: only the random.Random passed in is used, so one seed gives one sequence of samples.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

N_CHUNKS = 2

Ranges = tuple[tuple[int, int], ...]  # half-open [start, end) token index ranges into the document


def pose_sample(rng: random.Random, n_tokens_available: int, train_ctx: int,
                target_ctx: int) -> tuple[Ranges, list[int]]:
    """One PoSE sample: the document ranges that make its content (concatenated in order) and its position ids.

    `n_tokens_available` is the document's length Lx (≥ train_ctx); returns N_CHUNKS ranges whose lengths sum
    to train_ctx, and train_ctx position ids in [0, target_ctx).
    """
    lc, lx, lt = int(train_ctx), int(n_tokens_available), int(target_ctx)
    if lc < 2:
        raise ValueError(f"train_ctx must be at least 2, got {lc}")
    if lt < lc:
        raise ValueError(f"target_ctx {lt} must be at least train_ctx {lc}")
    if lx < lc:
        raise ValueError(f"the document has {lx} tokens, fewer than train_ctx {lc}")
    rt1 = rng.randint(1, (lc + 1) // 2)
    rt2 = rng.randint(lc, lx)
    lt2 = rt2 - (lc - rt1)
    r = rng.randint(0, lt - lc)
    positions = list(range(rt1)) + list(range(r + rt1, r + lc))
    return ((0, rt1), (lt2, rt2)), positions


def gather(ids: Sequence[int], ranges: Ranges) -> list[int]:
    """The sample's token ids: the ranges of `ids`, concatenated."""
    out: list[int] = []
    for start, end in ranges:
        out.extend(ids[start:end])
    return out
