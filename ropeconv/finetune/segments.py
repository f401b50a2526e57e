"""Segmented-sequence sampling (Karypis, McAuley, Karypis 2023, arXiv 2310.14633): segments sub-sampled from a long
input, each token keeping its original position, so a window of the original length Lc carries the relative
distances of a target context Lt.

A long input is a window of Lt = target_ctx consecutive tokens of a document x of Lx ≥ Lt tokens; its tokens'
original positions are 0 … Lt − 1 (the window's own offsets). One sample is K = n_segments segments of it, in
document order, whose lengths sum to Lc = train_ctx (`randint` includes both ends):

    w      = randint(0, Lx − Lt)                      # the long input x[w : w + Lt]
    l_i    = Lc // K + (1 if i < Lc mod K else 0)     # segment lengths, i = 0 … K − 1: equal, the first ones longer
    g_1 … g_K: a composition of G = Lt − Lc into K parts ≥ 0, uniform over all C(G + K − 1, K − 1) of them
               (sorted random.sample of K − 1 cut points from G + K − 1 slots: "stars and bars")
    s_0    = 0;  s_i = s_{i−1} + l_{i−1} + g_i     # segment i's window offset; g_K is the tail left out
    content   = x[w + s_i : w + s_i + l_i] for each i, concatenated
    positions = [s_i, …, s_i + l_i − 1] for each i  (the original positions: the window offset of every token)

So the first segment always holds the window's head (position 0), positions are strictly increasing and below Lt,
and the largest relative distance in a sample, Lt − 1 − g_K, reaches Lt − 1 whenever the tail gap g_K is 0
(probability (K − 1)/(G + K − 1)). The paper keeps the sequence length of the original training (no extra memory);
its body is not quoted here, so the defaults are ropeconv's: K = DEFAULT_SEGMENTS, Lc = the base's original
context, Lt = 4·Lc (the paper's reported 4× extension). For an absolute-position model (GPT-2, OPT) the position
table is first interpolated to Lt rows (`--method absolute`), and the segments teach the new rows.

Pure: only the random.Random passed in is used, so one seed gives one sequence of samples.
"""

from __future__ import annotations

import random

from ropeconv.finetune.pose import Ranges

DEFAULT_SEGMENTS = 4


def segment_lengths(train_ctx: int, n_segments: int) -> list[int]:
    """K lengths summing to train_ctx, as equal as possible, the longer ones first."""
    base, extra = divmod(int(train_ctx), int(n_segments))
    return [base + (1 if i < extra else 0) for i in range(n_segments)]


def check_segments(train_ctx: int, target_ctx: int, n_segments: int) -> str | None:
    """Why (train_ctx, target_ctx, n_segments) admit no sample, or None."""
    if n_segments < 1:
        return f"the number of segments must be at least 1, got {n_segments}"
    if train_ctx < n_segments:
        return f"train_ctx {train_ctx} cannot hold {n_segments} segments of at least one token"
    if target_ctx < train_ctx:
        return f"target_ctx {target_ctx} must be at least train_ctx {train_ctx}"
    return None


def segments_sample(rng: random.Random, n_tokens_available: int, train_ctx: int, target_ctx: int,
                    n_segments: int = DEFAULT_SEGMENTS) -> tuple[Ranges, list[int]]:
    """One sample: the document ranges (in order) that make its content, and its train_ctx position ids."""
    lc, lt, lx, k = int(train_ctx), int(target_ctx), int(n_tokens_available), int(n_segments)
    problem = check_segments(lc, lt, k)
    if problem:
        raise ValueError(problem)
    if lx < lt:
        raise ValueError(f"the document has {lx} tokens, fewer than target_ctx {lt}")
    w = rng.randint(0, lx - lt)
    gaps = _composition(rng, lt - lc, k)
    ranges: list[tuple[int, int]] = []
    positions: list[int] = []
    start = 0
    for i, length in enumerate(segment_lengths(lc, k)):
        start += gaps[i - 1] if i else 0  # segment 0 starts at the window's head
        ranges.append((w + start, w + start + length))
        positions.extend(range(start, start + length))
        start += length
    return tuple(ranges), positions


def _composition(rng: random.Random, total: int, parts: int) -> list[int]:
    """`parts` non-negative ints summing to `total`, uniform over all compositions."""
    cuts = sorted(rng.sample(range(total + parts - 1), parts - 1))
    edges = [-1, *cuts, total + parts - 1]
    return [b - a - 1 for a, b in zip(edges, edges[1:])]
