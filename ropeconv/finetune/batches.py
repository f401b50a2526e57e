"""The global batch of a training step, drawn from (seed, step) alone, and each process's slice of it.

Step s draws its `global_batch` samples from random.Random(f"{seed}:{s}"): a document uniformly, then the sampling
rule (PoSE or segments) on it. The draw does not depend on the number of processes, nor on earlier steps, so
  - one process and N processes see the same samples at every step (process r takes rows r·B/N … (r+1)·B/N − 1),
  - a run resumed at step k + 1 draws exactly what an uninterrupted run draws there (no sampler state to save).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ropeconv.finetune.pose import Ranges, gather

# (rng, document length) -> (ranges into the document, position ids)
SampleRule = Callable[[random.Random, int], tuple[Ranges, list[int]]]


@dataclass(frozen=True)
class Sample:
    document: int  # index into the documents
    ranges: Ranges
    input_ids: tuple[int, ...]
    position_ids: tuple[int, ...]


def step_rng(seed: int, step: int) -> random.Random:
    return random.Random(f"ropeconv-finetune:{int(seed)}:{int(step)}")  # str seeds hash with sha512: portable


def global_batch(seed: int, step: int, documents: Sequence[Sequence[int]], size: int, rule: SampleRule) -> list[Sample]:
    rng = step_rng(seed, step)
    out = []
    for _ in range(size):
        index = rng.randrange(len(documents))
        ranges, positions = rule(rng, len(documents[index]))
        out.append(Sample(index, ranges, tuple(gather(documents[index], ranges)), tuple(positions)))
    return out


def process_slice(samples: Sequence[Sample], rank: int, world: int) -> list[Sample]:
    """Process `rank`'s contiguous share of the global batch (its size divides evenly: checked up front)."""
    per = len(samples) // world
    return list(samples[rank * per:(rank + 1) * per])
