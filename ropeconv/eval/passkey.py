"""Passkey retrieval (methods.md §14): the Landmark/YaRN/LongLoRA prompt, byte for byte, and its scorer.

    prompt = "\\n".join([TASK, prefix, info, suffix, QUESTION])
    prefix = filler[:n_prefix]; suffix = filler[:n_garbage − n_prefix]      (CHARACTER counts, both from the start)
    filler = " ".join([GARBAGE] * N)

Differences from the reference scripts, all in how the numbers are chosen, none in the text:
* the depth is a fraction, n_prefix = round(depth · n_garbage) (§14's fixed-grid rule); a random depth is
  drawn uniform in [0, 1] (YaRN draws n_prefix = randint(0, n_garbage): the same distribution up to rounding);
* n_garbage is bisected (YaRN grows it in 128-char steps) to the largest count whose tokenized prompt does
  not exceed the requested length in the runtime's own tokenizer, so the prompt lies within
  `tolerance(length)` tokens below it;
* every trial draws (key, depth) from its own RNG seeded by (seed, length, trial[, depth]), so a trial is the
  same whatever else is in the sweep (a resumed or extended sweep reproduces it).
Scoring is YaRN's: the first ``\\d+`` of the greedy continuation (max_new_tokens 10), compared as an integer
with the key (so "012345" counts for 12345, and "12,345" reads as 12).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ropeconv.errors import InputError
from ropeconv.eval.cache import number, whole

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
GARBAGE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"
MAX_NEW_TOKENS = 10
KEY_MIN, KEY_MAX = 1, 50000
SENTENCE = len(GARBAGE) + 1  # one filler repetition and its joining space, in characters
TEMPLATE = "yarn-longlora-v1"  # bump when the text or the fitting rule changes (part of the cache key)


def info_line(key: int) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def filler(n_chars: int) -> str:
    """The first n_chars of " ".join([GARBAGE] * N) for any N large enough (the reference uses N = 10000)."""
    repeats = n_chars // SENTENCE + 2
    return " ".join([GARBAGE] * repeats)[:n_chars]


@dataclass(frozen=True)
class Prompt:
    text: str
    key: int
    depth: float
    n_garbage: int  # filler characters in all (prefix + suffix)
    n_prefix: int  # filler characters before the key sentence

    @property
    def info_offset(self) -> int:
        """Character offset of the key sentence in the prompt."""
        return len(TASK) + 1 + self.n_prefix + 1


def build_prompt(n_garbage: int, depth: float, key: int) -> Prompt:
    if n_garbage < 0 or not 0.0 <= depth <= 1.0:
        raise ValueError(f"n_garbage must be ≥ 0 and depth in [0, 1], got {n_garbage}, {depth}")
    n_prefix = round(depth * n_garbage)
    text = "\n".join([TASK, filler(n_prefix), info_line(key), filler(n_garbage - n_prefix), QUESTION])
    return Prompt(text=text, key=key, depth=depth, n_garbage=n_garbage, n_prefix=n_prefix)


def trial_rng(seed: int, length: int, trial: int, depth_index: int | None = None) -> random.Random:
    # str seeds hash with sha512 in Python's random (version 2): stable across runs and platforms
    return random.Random(f"ropeconv-passkey:{seed}:{length}:{trial}:{'r' if depth_index is None else depth_index}")


def draw_trial(seed: int, length: int, trial: int, depth: float | None = None,
               depth_index: int | None = None) -> tuple[int, float]:
    """(key, depth) for one trial: key uniform in 1…50000; depth uniform in [0, 1] unless fixed by the grid."""
    rng = trial_rng(seed, length, trial, depth_index)
    key = rng.randint(KEY_MIN, KEY_MAX)
    drawn = rng.random()
    return key, (drawn if depth is None else depth)


def tolerance(length: int) -> int:
    """How many tokens below the requested length a fitted prompt may fall: 0.5 %, at least 8."""
    return max(8, math.ceil(0.005 * length))


def fit_prompt(count_tokens: Callable[[str], int], length: int, depth: float, key: int) -> tuple[Prompt, int]:
    """The prompt with the most filler whose token count ≤ length, and its count (≥ length − tolerance)."""
    # first guess: ≥ 3 characters per token in practice, so usually one doubling at most
    n, count = largest_fitting(count_tokens, lambda n: build_prompt(n, depth, key).text, length,
                               first=lambda n0: max(SENTENCE, 3 * (length - n0)), limit=64 * length + 10_000,
                               tolerance=tolerance(length), what="passkey")
    return build_prompt(n, depth, key), count


def largest_fitting(count_tokens: Callable[[str], int], text_of: Callable[[int], str], length: int, *,
                    first: Callable[[int], int], limit: int, tolerance: int, what: str) -> tuple[int, int]:
    """The largest n ≥ 0 whose text_of(n) is at most `length` tokens, and that count (≥ length − tolerance).

    n is what grows the prompt (passkey: filler characters; RULER: haystack sentences, words); first(n0) is the
    first guess from the template's own count n0, doubled until it overshoots (past `limit`: the filler does not
    grow the prompt in this tokenizer), then bisected."""
    n0 = count_tokens(text_of(0))
    if n0 > length:
        raise InputError(f"{what} length {length}: the template alone is {n0} tokens in this tokenizer")
    lo, lo_count = 0, n0
    hi = max(1, first(n0))
    while (hi_count := count_tokens(text_of(hi))) <= length:
        lo, lo_count, hi = hi, hi_count, hi * 2
        if hi > limit:  # a tokenizer that swallows the filler whole: cannot reach the length
            raise InputError(f"{what} length {length}: the filler does not grow the prompt in this tokenizer")
    while hi - lo > 1:  # invariant: count(lo) ≤ length < count(hi)
        mid = (lo + hi) // 2
        c = count_tokens(text_of(mid))
        if c <= length:
            lo, lo_count = mid, c
        else:
            hi = mid
    if length - lo_count > tolerance:
        raise InputError(f"{what} length {length}: the closest prompt is {lo_count} tokens "
                         f"(tolerance {tolerance})")
    return lo, lo_count


_INT = re.compile(r"\d+")


def first_integer(text: str) -> int | None:
    """The first run of ASCII digits in text, as an integer; None when there is none."""
    match = _INT.search(text)
    return int(match.group()) if match else None


def score(output: str, key: int) -> bool:
    """YaRN's rule: the first integer of the continuation equals the key."""
    return first_integer(output) == key


# ---------------------------------------------------------------- parsing of the sweep's axes

_LENGTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_lengths(text: str, flag: str = "--lengths") -> list[int]:
    """'4k,8k,12000' → [4096, 8192, 12000]: k = 1024 tokens, m = 1024²; sorted, deduplicated."""
    out = []
    for part in str(text).split(","):
        match = _LENGTH.match(part)
        if not match:
            raise InputError(f"{flag} {text!r}: expected token counts like 4k,8k,12000")
        value = float(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2}[match.group(2).lower()]
        if value != int(value) or value < 2:
            raise InputError(f"{flag} {text!r}: {part.strip()} is not a token count ≥ 2")
        out.append(int(value))
    return sorted(set(out))


def parse_depths(text: str | None) -> list[float] | None:
    """'random' (or None) → None; '0,0.25,0.5' → a sorted grid of fractions in [0, 1]."""
    if text is None or str(text).strip().lower() == "random":
        return None
    try:
        depths = sorted({float(p) for p in str(text).split(",")})
    except ValueError:
        raise InputError(f"--depths {text!r}: expected 'random' or fractions like 0,0.25,0.5,0.75,1") from None
    if not depths or depths[0] < 0 or depths[-1] > 1:
        raise InputError(f"--depths {text!r}: depths are fractions of the filler in [0, 1]")
    return depths


@dataclass(frozen=True)
class TrialSpec:
    length: int
    trial: int
    depth_index: int | None  # grid index, or None for a random depth

    @property
    def id(self) -> str:
        return f"{self.length}:{self.trial}:{'r' if self.depth_index is None else self.depth_index}"


def trial_specs(lengths: Sequence[int], trials: int, depths: Sequence[float] | None) -> list[TrialSpec]:
    if depths is None:
        return [TrialSpec(L, t, None) for L in lengths for t in range(trials)]
    return [TrialSpec(L, t, d) for L in lengths for d in range(len(depths)) for t in range(trials)]


def run_trial(runtime, spec: TrialSpec, seed: int, depths: Sequence[float] | None,
              max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """Build, fit, generate and score one trial in the runtime; the record that passkey.json lists."""
    depth = None
    if spec.depth_index is not None:
        assert depths is not None  # a grid index comes with its grid (trial_specs)
        depth = depths[spec.depth_index]
    key, depth = draw_trial(seed, spec.length, spec.trial, depth, spec.depth_index)
    prompt, n_tokens = fit_prompt(lambda t: len(runtime.tokenize(t)), spec.length, depth, key)
    ids = runtime.tokenize(prompt.text)
    new = runtime.generate(ids, max_new_tokens)
    output = runtime.detokenize(new)
    return {"id": spec.id, "length": spec.length, "trial": spec.trial, "tokens": n_tokens, "depth": depth,
            "n_garbage": prompt.n_garbage, "n_prefix": prompt.n_prefix, "key": key, "output": output,
            "answer": first_integer(output), "hit": score(output, key)}


# what summarize() and the report read of a cached trial (eval.cache checks it on reading)
RECORD_FIELDS = {"length": lambda v: whole(v) and v > 0, "trial": whole, "tokens": whole,
                 "depth": lambda v: number(v) and 0 <= v <= 1, "key": whole, "output": lambda v: isinstance(v, str),
                 "hit": lambda v: isinstance(v, bool)}


def depth_bins(records: list[dict], depths: Sequence[float] | None, n_bins: int = 5) -> list[tuple[str, list]]:
    """Group records by depth: the grid's values, or n_bins equal bins for random depths."""
    if depths is not None:
        return [(f"{d:g}", [r for r in records if r["depth"] == d]) for d in depths]
    bins = []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = [r for r in records if lo <= r["depth"] < hi or (b == n_bins - 1 and r["depth"] == 1.0)]
        bins.append((f"{lo:.1f}–{hi:.1f}", inside))
    return bins


def summarize(records: list[dict], lengths: Sequence[int], depths: Sequence[float] | None) -> dict:
    def acc(rs):
        return (sum(r["hit"] for r in rs) / len(rs)) if rs else None

    per_length = []
    per_depth = []
    for L in lengths:
        rs = [r for r in records if r["length"] == L]
        per_length.append({"length": L, "trials": len(rs), "hits": sum(r["hit"] for r in rs), "accuracy": acc(rs),
                           "mean_tokens": (sum(r["tokens"] for r in rs) / len(rs)) if rs else None})
        for label, inside in depth_bins(rs, depths):
            per_depth.append({"length": L, "depth": label, "trials": len(inside), "accuracy": acc(inside)})
    return {"per_length": per_length, "per_length_depth": per_depth, "accuracy": acc(records)}
