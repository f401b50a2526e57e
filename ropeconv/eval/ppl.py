"""Perplexity on the user's text (methods.md §15, YaRN's eval/perplexity.py).

The text is tokenized without special tokens. When the model's tokenizer adds a BOS token, every window
starts with one and holds L − 1 text tokens (YaRN's add_start_token: max_length = L − 1), so a window
is exactly L tokens either way.

* sliding (--stride S): for begin in range(0, n, S): end = min(begin + W, n); only the last
  trg_len = end − prev_end tokens of the window are scored (each sees up to W − trg_len tokens of context);
  stop once end = n. PPL = exp(mean over windows of the window's mean NLL) — window-mean, as in YaRN, not
  token-weighted (the token-weighted value is reported too as nll_tokens).
* single pass (no stride; YaRN's --truncate): the first W text tokens, one forward, every token scored.
A position with no token before it (the first of a window without BOS) is never scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ropeconv.errors import InputError
from ropeconv.eval.cache import number, whole


def window_tokens(length: int, bos_id: int | None) -> int:
    return length - 1 if bos_id is not None else length


def mode_name(stride: int | None) -> str:
    return f"sliding window, stride {stride}" if stride else "single pass (first window of the text)"


def check_text(n_text_tokens: int, length: int, bos_id: int | None, label: str) -> None:
    need = window_tokens(length, bos_id)
    if n_text_tokens < need:
        raise InputError(f"--text is too short for length {length} with {label}: {n_text_tokens} tokens, "
                         f"needs {need}")


def check_stride(stride: int | None, length: int, bos_id: int | None) -> None:
    """A stride longer than the window would leave tokens between windows unscored."""
    if stride is None:
        return
    if stride < 1:
        raise InputError("--stride must be positive")
    if stride > window_tokens(length, bos_id):
        raise InputError(f"--stride {stride} is longer than the {window_tokens(length, bos_id)}-token window of "
                         f"length {length}: tokens between windows would go unscored")


def windows(n: int, width: int, stride: int | None) -> list[tuple[int, int, int]]:
    """(begin, end, trg_len) per window over n text tokens."""
    if not stride:
        return [(0, width, width)]
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + width, n)
        out.append((begin, end, end - prev_end))
        prev_end = end
        if end == n:
            break
    return out


# what the report and the plot read of a cached perplexity (eval.cache checks it on reading)
RECORD_FIELDS = {"length": lambda v: whole(v) and v > 0, "tokens": lambda v: whole(v) and v > 0,
                 "windows": lambda v: whole(v) and v > 0, "nll": lambda v: number(v) and v >= 0,
                 "ppl": lambda v: number(v) and v > 0, "nll_tokens": lambda v: number(v) and v >= 0,
                 "ppl_tokens": lambda v: number(v) and v > 0, "mode": lambda v: isinstance(v, str)}


def perplexity(text_ids: list[int], length: int, logprobs: Callable[[list[int]], np.ndarray],
               bos_id: int | None = None, stride: int | None = None,
               on_window: Callable[[int, int], None] | None = None) -> dict:
    """NLL and PPL of text_ids at context `length`; logprobs(ids) → log p(ids[i] | ids[:i]) for i ≥ 1."""
    width = window_tokens(length, bos_id)
    if len(text_ids) < width:
        raise InputError(f"the text has {len(text_ids)} tokens, fewer than the {width} a window of {length} needs")
    check_stride(stride, length, bos_id)
    spans = windows(len(text_ids), width, stride)
    prefix = [bos_id] if bos_id is not None else []
    window_nll, total, count = [], 0.0, 0
    for i, (begin, end, trg_len) in enumerate(spans):
        ids = prefix + list(text_ids[begin:end])
        lp = logprobs(ids)  # len(ids) − 1 entries, for positions 1 … len(ids) − 1
        scored = lp[-min(trg_len, len(lp)):]
        window_nll.append(float(-scored.mean()))
        total += float(-scored.sum())
        count += len(scored)
        if on_window:
            on_window(i + 1, len(spans))
    nll = float(np.mean(window_nll))
    return {"length": length, "tokens": count, "windows": len(spans), "nll": nll, "ppl": math.exp(nll),
            "nll_tokens": total / count, "ppl_tokens": math.exp(total / count), "mode": mode_name(stride),
            "stride": stride}
