"""The stated bounds of what `ropeconv search longrope` accepts, checked before anything is read or drawn: the
CLI's option types use them, and run.prepare() checks a job built in code against the same numbers.

The initial population is drawn whole before its first candidate is scored, and every mutation draws from a grid
of 0.01 steps up to λ_max, so an unbounded --population or --max-factor grows without scoring anything.
"""

from __future__ import annotations

MIN_POPULATION = 4  # parents are the best half, mutants and crossovers a quarter each
MAX_POPULATION = 1024  # the paper's search uses 64
MAX_GENERATIONS = 1000  # the paper's uses 40
MAX_EVALUATIONS = 100_000  # per phase: P + T·(P/4 + P/4); what one fitness cache file holds (eval.cache)
MAX_SAMPLES = 256  # windows per evaluation
MAX_SEED = 2**32 - 1
MAX_FACTOR = 10_000.0  # λ_max: a mutation draws from the 0.01 grid between two neighbours, up to 10⁶ points

# --text: the search scores `samples` windows from the start of the text, so it reads only a prefix of it
from ropeconv.eval.text import MAX_TEXT_BYTES, MIN_TEXT_BYTES, TEXT_BYTES_PER_TOKEN, text_bytes  # noqa: E402,F401
