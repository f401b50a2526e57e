"""LongRoPE's evolutionary search over per-pair rescale factors — Ding et al. 2024, arXiv 2402.13753, §3.2 and
Algorithm 1 (the released search: microsoft/LongRoPE evolution/, dim_mono).

    θ'_j = θ_j / λ_j,   j = 0 … d/2 − 1 (highest frequency first)
    search space:  1 ≤ λ_0 ≤ λ_1 ≤ … ≤ λ_{d/2−1} ≤ λ_max,   λ_max = 1.25·s (s = L'/L), on a 0.01 grid
    fitness:       perplexity at the target length (lower is better), supplied by the caller
    population P:  the seeds (PI, NTK, YaRN, dynamic NTK at L'), then mutants of them until P candidates
    generation:    parents = the best P/2 so far; N1 = P/4 mutants of random parents and N2 = P/4
                   crossovers of two random parents are evaluated; the best P/2 of parents ∪ children survive
                   (the paper's 64 / 32 / 16 / 16: P + T·(N1 + N2) evaluations, 1,344 for T = 40)
    mutation:      each λ_j, in order of j, with probability p = 0.3 resampled uniformly from the grid points in
                   [λ_{j−1}, λ_{j+1}] (λ_{−1} = 1, λ_{d/2} = λ_max), so the child stays monotone; redrawn until
                   it is new. (The released code redraws every λ_j with probability 0.3 per attempt; this is the
                   per-element form the paper describes.)
    crossover:     child = parent1, each λ_j with probability p replaced, with probability 1/2, by parent2's λ_j;
                   kept when monotone and new, else redrawn (≤ 20 tries), else a mutant of parent1

Pure functions over numpy arrays and a seeded numpy Generator: the same seed and the same fitness values give
the same candidates in the same order, which is what makes a resumed search (fitness values from a cache) equal
an uninterrupted one. Nothing here knows about models.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

MUTATION_P = 0.3  # the paper's p
CROSSOVER_TAKE_P = 0.5  # given a picked element, the chance it comes from parent2 (released code)
MAX_CROSSOVER_TRIES = 20
MAX_MUTATION_TRIES = 200  # a new candidate is almost always found in a few; bounded for tiny search spaces
GRID_STEP = 0.01
MAX_FACTOR_OVER_SCALE = 1.25  # λ_max = 1.25·s (paper's search space table)
WORST_FITNESS = sys.float_info.max  # what a fitness that is not a finite number counts as: below every finite one


@dataclass(frozen=True)
class SearchSpace:
    """Monotone factor lists of n_pairs values in [1, max_factor], mutated on a grid of `step`."""

    n_pairs: int
    max_factor: float
    step: float = GRID_STEP

    def __post_init__(self):
        if self.n_pairs < 1:
            raise ValueError("a search space needs at least one pair")
        if not (self.max_factor >= 1 and math.isfinite(self.max_factor)):
            raise ValueError(f"max_factor must be a finite number ≥ 1, got {self.max_factor}")
        if not self.step > 0:
            raise ValueError("step must be positive")


@dataclass(frozen=True)
class Settings:
    """Sizes of one search: the paper's defaults are population 64 and 40 generations."""

    population: int = 64
    generations: int = 40
    parents: int | None = None  # default population // 2
    mutations: int | None = None  # default population // 4
    crossovers: int | None = None  # default population // 4
    mutation_p: float = MUTATION_P

    @property
    def n_parents(self) -> int:
        return self.parents if self.parents is not None else max(2, self.population // 2)

    @property
    def n_mutations(self) -> int:
        return self.mutations if self.mutations is not None else max(1, self.population // 4)

    @property
    def n_crossovers(self) -> int:
        return self.crossovers if self.crossovers is not None else max(1, self.population // 4)

    def evaluations(self) -> int:
        """At most this many fitness evaluations (fewer when seeds coincide)."""
        return self.population + self.generations * (self.n_mutations + self.n_crossovers)


def satisfies(factors: np.ndarray, space: SearchSpace) -> bool:
    """The paper's constraints: every λ_j in [1, λ_max] and non-decreasing from high to low frequency."""
    f = np.asarray(factors, dtype=np.float64)
    return (f.shape == (space.n_pairs,) and bool(np.all(np.isfinite(f))) and bool(f.min() >= 1.0)
            and bool(f.max() <= space.max_factor) and bool(np.all(np.diff(f) >= 0)))


def into_space(factors: np.ndarray, space: SearchSpace) -> np.ndarray:
    """A seed made a member of the space: clipped to [1, λ_max], then lifted to be non-decreasing."""
    f = np.clip(np.asarray(factors, dtype=np.float64), 1.0, space.max_factor)
    return np.maximum.accumulate(f)


def key(factors: np.ndarray) -> str:
    """The candidate's identity: its float64 values, each written so it reads back exactly."""
    return ",".join(repr(float(x)) for x in factors)


def _grid_between(low: float, high: float, space: SearchSpace) -> np.ndarray:
    """Grid points 1 + k·step inside [low, high] (the 1e-9 absorbs the float error of (x − 1)/step)."""
    k_lo = math.ceil((low - 1.0) / space.step - 1e-9)
    k_hi = math.floor((high - 1.0) / space.step + 1e-9)
    if k_hi < k_lo:
        return np.empty(0)
    points = np.round(1.0 + np.arange(k_lo, k_hi + 1) * space.step, 10)
    return points[(points >= low) & (points <= high)]


def mutate_once(factors: np.ndarray, space: SearchSpace, rng: np.random.Generator, p: float) -> np.ndarray:
    """One draw: each λ_j, in order, with probability p moved to a grid point between its neighbours."""
    child = np.array(factors, dtype=np.float64)
    n = len(child)
    for j in range(n):
        if rng.random() >= p:
            continue
        low = 1.0 if j == 0 else child[j - 1]
        high = space.max_factor if j == n - 1 else child[j + 1]
        points = _grid_between(low, high, space)
        if len(points):
            child[j] = points[rng.integers(len(points))]
    return child


def mutate(factors: np.ndarray, space: SearchSpace, rng: np.random.Generator, seen: set[str],
           p: float = MUTATION_P) -> np.ndarray:
    """A new monotone candidate near `factors` (redrawn while it is one already seen)."""
    child = factors
    for _ in range(MAX_MUTATION_TRIES):
        child = mutate_once(factors, space, rng, p)
        if key(child) not in seen and satisfies(child, space):
            return child
    return child  # the neighbourhood is exhausted: a repeat (its fitness is known, so it costs nothing)


def crossover(parent1: np.ndarray, parent2: np.ndarray, space: SearchSpace, rng: np.random.Generator,
              seen: set[str], p: float = MUTATION_P) -> np.ndarray | None:
    """A new monotone child mixing two parents element-wise, or None after MAX_CROSSOVER_TRIES."""
    if np.array_equal(parent1, parent2):
        return None
    for _ in range(MAX_CROSSOVER_TRIES):
        take = (rng.random(len(parent1)) < p) & (rng.random(len(parent1)) < CROSSOVER_TAKE_P)
        child = np.where(take, parent2, parent1).astype(np.float64)
        if key(child) not in seen and satisfies(child, space):
            return child
    return None


@dataclass(frozen=True)
class Evaluated:
    """One evaluated candidate, in evaluation order."""

    index: int
    generation: int  # 0: the initial population
    origin: str  # "seed:<method>", "mutation", "crossover", "crossover→mutation"
    factors: np.ndarray
    fitness: float
    parents: tuple[int, ...] = ()  # indices of the candidates it came from


@dataclass(frozen=True)
class SearchResult:
    best: np.ndarray
    best_fitness: float
    best_initial_fitness: float
    best_seed: str  # the method whose seed scored best
    best_per_generation: tuple[float, ...]  # [0]: the initial population
    evaluated: tuple[Evaluated, ...]
    seed_fitness: Mapping[str, float] = field(default_factory=dict)


def initial_population(seeds: Mapping[str, np.ndarray], space: SearchSpace, settings: Settings,
                       rng: np.random.Generator) -> list[tuple[np.ndarray, str, tuple[str, ...]]]:
    """(factors, origin, parents' names): the distinct seeds, then mutants of them in turn, P in all."""
    out: list[tuple[np.ndarray, str, tuple[str, ...]]] = []
    seen: set[str] = set()
    names = []
    for name, factors in seeds.items():
        f = into_space(factors, space)
        if key(f) in seen:
            continue
        seen.add(key(f))
        out.append((f, f"seed:{name}", ()))
        names.append(name)
    if not out:
        raise ValueError("the search needs at least one seed")
    out = out[: settings.population]
    i = 0
    while len(out) < settings.population:
        parent, origin, _ = out[i % len(names)]
        child = mutate(parent, space, rng, seen, settings.mutation_p)
        seen.add(key(child))
        out.append((child, "mutation", (origin,)))
        i += 1
    return out


def evolve(seeds: Mapping[str, np.ndarray], space: SearchSpace, fitness: Callable[[np.ndarray], float],
           settings: Settings, seed: int, on_evaluated: Callable[[Evaluated], None] | None = None,
           on_generation: Callable[[int, float], None] | None = None) -> SearchResult:
    """The search. `fitness` is called once per distinct candidate, in a deterministic order; on_evaluated
    sees each record as it is made, on_generation each generation's best fitness."""
    if settings.population < 2 or settings.generations < 0:
        raise ValueError("population must be at least 2 and generations at least 0")
    rng = np.random.default_rng(seed)
    evaluated: list[Evaluated] = []
    known: dict[str, Evaluated] = {}

    def evaluate(factors: np.ndarray, generation: int, origin: str, parents: tuple[int, ...]) -> Evaluated:
        k = key(factors)
        if k in known:  # a repeat: no second evaluation, no second record
            return known[k]
        assert satisfies(factors, space), f"candidate outside the search space: {factors}"
        value = float(fitness(factors))
        record = Evaluated(len(evaluated), generation, origin, factors,
                           value if math.isfinite(value) else WORST_FITNESS, parents)
        evaluated.append(record)
        known[k] = record
        if on_evaluated:
            on_evaluated(record)
        return record

    population = []
    by_origin: dict[str, int] = {}
    for factors, origin, parent_names in initial_population(seeds, space, settings, rng):
        parent_ids = tuple(by_origin[n] for n in parent_names)
        record = evaluate(factors, 0, origin, parent_ids)
        by_origin.setdefault(origin, record.index)
        population.append(record)
    # every seed by name, also one that coincided with an earlier seed (evaluated once)
    seed_fitness = {name: known[key(into_space(f, space))].fitness for name, f in seeds.items()
                    if key(into_space(f, space)) in known}
    best_initial = min(population, key=_rank)
    curve = [best_initial.fitness]
    if on_generation:
        on_generation(0, best_initial.fitness)

    seen = set(known)
    n_parents = min(settings.n_parents, len(population))
    for generation in range(1, settings.generations + 1):
        parents = sorted(population, key=_rank)[:n_parents]
        children = []
        for _ in range(settings.n_mutations):
            parent = parents[rng.integers(len(parents))]
            child = mutate(parent.factors, space, rng, seen, settings.mutation_p)
            seen.add(key(child))
            children.append(evaluate(child, generation, "mutation", (parent.index,)))
        for _ in range(settings.n_crossovers):
            i, j = sorted(rng.choice(len(parents), size=2, replace=False)) if len(parents) > 1 else (0, 0)
            crossed = crossover(parents[i].factors, parents[j].factors, space, rng, seen, settings.mutation_p)
            came_from: tuple[int, ...] = (parents[i].index, parents[j].index)
            origin = "crossover"
            if crossed is None:
                crossed = mutate(parents[i].factors, space, rng, seen, settings.mutation_p)
                origin, came_from = "crossover→mutation", (parents[i].index,)
            seen.add(key(crossed))
            children.append(evaluate(crossed, generation, origin, came_from))
        population = _distinct(parents + children)
        curve.append(min(population, key=_rank).fitness)
        if on_generation:
            on_generation(generation, curve[-1])

    best = min(population, key=_rank)
    return SearchResult(best=best.factors, best_fitness=best.fitness, best_initial_fitness=best_initial.fitness,
                        best_seed=min(seed_fitness, key=lambda n: seed_fitness[n]),
                        best_per_generation=tuple(curve), evaluated=tuple(evaluated),
                        seed_fitness=seed_fitness)


def _rank(record: Evaluated) -> tuple[float, int]:
    """Lower fitness first; ties go to the earlier candidate, so the order never depends on anything else."""
    return (record.fitness, record.index)


def _distinct(records: list[Evaluated]) -> list[Evaluated]:
    out, seen = [], set()
    for r in records:
        if r.index not in seen:
            seen.add(r.index)
            out.append(r)
    return out
