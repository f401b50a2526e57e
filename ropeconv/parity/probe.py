"""The deterministic probe: seeded token ids whose positions cross the original context.

A probe shorter than the original context is placed at an offset so its positions still cross it;
length-switched rules (dynamic NTK, LongRoPE) get a second, short pass so both sides are checked.
The probe pass ends with DECODE_STEPS tokens fed one at a time through the KV cache, on both sides,
after a prefill that already crosses the original context (so LongRoPE's cached keys are long ones
in every runtime). llama.cpp, which reads the probe through its cache in chunks anyway, ignores the split.

A full-length probe (--full-length, and the default on a GPU up to FULL_LENGTH_GPU_TOKENS) starts at
position 0 and runs to the target context, so relative distances reach the target. A prefill longer than
LONG_PREFILL goes through the KV cache in chunks of PREFILL_CHUNK tokens on every side, so that
activations stay bounded (the attention of one chunk against the keys before it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ropeconv.positions import LengthRule, PositionPlan

if TYPE_CHECKING:
    import torch

PROBE_SEED = 20231
DECODE_STEPS = 8
FULL_LENGTH_GPU_TOKENS = 32768  # the default probe on a GPU: positions 0 … min(target, this) − 1
LONG_PREFILL = 2048  # a prefill longer than this goes through the KV cache in chunks …
PREFILL_CHUNK = 1024  # … of this many tokens (llama.cpp's own micro-batches are smaller still)


@dataclass(frozen=True)
class Pass:
    name: str
    first_position: int
    n_tokens: int
    decode_steps: int = 0  # the last tokens, fed one per call through the runtime's KV cache
    chunk_tokens: int = 0  # the prefill through the KV cache this many tokens per call (0: in one call)
    # a longer first call: a length-switched rule (LongRoPE) decides per call, so the first call must already
    # cross the original context for every cached key to be a long one (as llama.cpp, deciding per context, has it)
    lead_tokens: int = 0

    @property
    def last_position(self) -> int:
        return self.first_position + self.n_tokens - 1

    def position_ids(self) -> torch.Tensor:
        import torch

        return torch.arange(self.first_position, self.first_position + self.n_tokens).unsqueeze(0)

    def prefill_chunks(self) -> list[tuple[int, int]]:
        """[start, end) token offsets of the prefill calls, then one per decode step."""
        prefill = self.n_tokens - self.decode_steps
        step = self.chunk_tokens or prefill
        first = min(prefill, max(step, self.lead_tokens))
        spans = [(0, first)] + [(a, min(a + step, prefill)) for a in range(first, prefill, step)]
        return spans + [(i, i + 1) for i in range(prefill, self.n_tokens)]


def pass_done(progress: Callable[[str], None] | None, index: int, total: int, p: Pass, started: float) -> None:
    """One progress line per finished pass: which, how many tokens, how long (parity runs for a minute on a
    real model without any other sign of life)."""
    if progress is not None:
        progress(f"  pass {index}/{total} ({p.name}): {p.n_tokens} tokens at positions {p.first_position}–"
                 f"{p.last_position} done in {time.monotonic() - started:.1f} s")


def run_each(passes: Sequence[Pass], run_one: Callable[[Pass], torch.Tensor],
             progress: Callable[[str], None] | None = None) -> list[torch.Tensor]:
    out = []
    for index, p in enumerate(passes, 1):
        started = time.monotonic()
        out.append(run_one(p))
        pass_done(progress, index, len(passes), p, started)
    return out


def default_tokens(plan: PositionPlan) -> int:
    """1.5× the original context (capped at the target and at 2048 tokens, which a CPU handles)."""
    # ALiBi has no positions to place a short probe at: only a longer one crosses the original context
    cap = 4096 if plan.kind == "alibi" else 2048
    return max(8, min(plan.target_ctx, plan.original_ctx + plan.original_ctx // 2, cap))


def full_length_tokens(plan: PositionPlan, on_gpu_by_default: bool = False) -> int:
    """Positions 0 … target − 1 (the default on a GPU stops at FULL_LENGTH_GPU_TOKENS)."""
    return min(plan.target_ctx, FULL_LENGTH_GPU_TOKENS) if on_gpu_by_default else plan.target_ctx


def plan_passes(plan: PositionPlan, n_tokens: int, chunk_tokens: int | None = None) -> list[Pass]:
    """chunk_tokens: None → PREFILL_CHUNK for a prefill longer than LONG_PREFILL, else one call."""
    first = 0 if n_tokens > plan.original_ctx or plan.kind == "alibi" else plan.original_ctx - n_tokens // 2
    if plan.kind == "absolute":  # a learned table has no row beyond target_ctx − 1 (llama.cpp asserts)
        first = max(0, min(first, plan.target_ctx - n_tokens))
    # the prefill (positions first … first + n − steps − 1) must itself cross the original context
    steps = max(0, min(DECODE_STEPS, n_tokens // 2, first + n_tokens - plan.original_ctx - 1))
    lead = plan.original_ctx - first + 1 if plan.length_rule is not LengthRule.STATIC else 0
    passes = [Pass("probe", first, n_tokens, steps, _chunk(n_tokens - steps, chunk_tokens), max(0, lead))]
    if plan.length_rule is not LengthRule.STATIC:
        short = min(n_tokens, plan.original_ctx)
        passes.insert(0, Pass("short", 0, short, chunk_tokens=_chunk(short, chunk_tokens)))
    return passes


def _chunk(prefill: int, chunk_tokens: int | None) -> int:
    if chunk_tokens is None:
        chunk_tokens = PREFILL_CHUNK if prefill > LONG_PREFILL else 0
    return chunk_tokens if 0 < chunk_tokens < prefill else 0


def probe_ids(vocab_size: int, n_tokens: int, seed: int = PROBE_SEED) -> torch.Tensor:
    import torch

    generator = torch.Generator().manual_seed(seed)
    # skip the lowest ids, where tokenizers keep their special tokens
    low = min(16, vocab_size // 2)
    return torch.randint(low, vocab_size, (1, n_tokens), generator=generator)
