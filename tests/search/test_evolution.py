"""LongRoPE's evolutionary search as pure functions (no model): the constraints, elitism, determinism, the
operators, the seeds read off the method plans, and convergence on a fitness whose optimum is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ropeconv import methods
from ropeconv.methods.base import ExtendRequest
from ropeconv.methods.ntk import ntk_theta
from ropeconv.positions import RopeScheme
from ropeconv.search import evolution as evo
from ropeconv.search.seeds import seed_factors

SCHEME = RopeScheme(theta=1e4, head_dim=32, rotary_dim=32, original_ctx=256, declared_ctx=256)
SPACE = evo.SearchSpace(16, 5.0)  # s = 4: λ_max = 1.25·4
SEEDS = seed_factors(SCHEME, 256, 1024)


def bumpy(x: np.ndarray) -> float:
    """A deterministic, many-minima fitness (no model): distance to a ramp plus a ripple."""
    target = np.linspace(1.0, 4.0, len(x))
    return float(np.mean((x - target) ** 2) + 0.05 * np.sin(7 * x).sum())


def test_every_candidate_respects_the_constraints_and_the_best_never_gets_worse():
    for seed in range(3):
        result = evo.evolve(SEEDS, SPACE, bumpy, evo.Settings(population=12, generations=8), seed)
        assert len(result.evaluated) == 12 + 8 * (3 + 3)
        for r in result.evaluated:
            assert evo.satisfies(r.factors, SPACE), (r.origin, r.factors)
            assert r.factors.min() >= 1.0 and np.all(np.diff(r.factors) >= 0)
        assert result.best_fitness <= result.best_initial_fitness
        assert result.best_fitness == min(r.fitness for r in result.evaluated)  # the best ever survives
        curve = result.best_per_generation
        assert all(b <= a for a, b in zip(curve, curve[1:])), curve
        assert curve[0] == result.best_initial_fitness and curve[-1] == result.best_fitness
        initial = [r for r in result.evaluated if r.generation == 0]
        assert result.best_initial_fitness == min(r.fitness for r in initial)


def test_same_seed_same_search_other_seed_another():
    settings = evo.Settings(population=8, generations=5)
    a = evo.evolve(SEEDS, SPACE, bumpy, settings, seed=7)
    b = evo.evolve(SEEDS, SPACE, bumpy, settings, seed=7)
    c = evo.evolve(SEEDS, SPACE, bumpy, settings, seed=8)
    assert [evo.key(r.factors) for r in a.evaluated] == [evo.key(r.factors) for r in b.evaluated]
    assert np.array_equal(a.best, b.best) and a.best_per_generation == b.best_per_generation
    assert [evo.key(r.factors) for r in a.evaluated] != [evo.key(r.factors) for r in c.evaluated]


def test_each_distinct_candidate_is_evaluated_once():
    calls = []

    def counting(x):
        calls.append(evo.key(x))
        return bumpy(x)

    result = evo.evolve(SEEDS, SPACE, counting, evo.Settings(population=8, generations=6), seed=0)
    assert len(calls) == len(set(calls)) == len(result.evaluated)


def test_initial_population_is_the_seeds_then_mutants_of_them():
    result = evo.evolve(SEEDS, SPACE, bumpy, evo.Settings(population=10, generations=0), seed=0)
    origins = [r.origin for r in result.evaluated]
    assert origins[:4] == ["seed:linear", "seed:ntk", "seed:yarn", "seed:dynamic"]
    assert origins[4:] == ["mutation"] * 6
    # the mutants descend from the seeds in turn
    assert [r.parents for r in result.evaluated[4:]] == [(0,), (1,), (2,), (3,), (0,), (1,)]
    for name, r in zip(SEEDS, result.evaluated):
        assert np.array_equal(r.factors, evo.into_space(SEEDS[name], SPACE))
    assert result.best_per_generation == (result.best_initial_fitness,)


def test_seeds_are_the_method_plans_per_pair_factors():
    """Independent of seeds.py: PI divides by s, NTK's base ratio gives (b'/b)^(2j/d), YaRN's plan divisors."""
    s, d = 4.0, SCHEME.rotary_dim
    j = np.arange(d // 2)
    assert np.allclose(SEEDS["linear"], s, rtol=1e-12)
    ratio = ntk_theta(SCHEME.theta, d, s) / SCHEME.theta
    assert np.allclose(SEEDS["ntk"], ratio ** (2 * j / d), rtol=1e-12)
    yarn = methods.get("yarn").plan(SCHEME, ExtendRequest(factor=s))
    assert np.allclose(SEEDS["yarn"], yarn.divisors, rtol=1e-12)
    # dynamic NTK at the target length: b·(s·L'/L − (s − 1))^(d/(d−2)) = b·13^(32/30) here
    assert np.allclose(SEEDS["dynamic"], (13.0 ** (d / (d - 2))) ** (2 * j / d), rtol=1e-12)
    assert SEEDS["dynamic"][-1] > SPACE.max_factor  # so it is clipped into the space:
    clipped = evo.into_space(SEEDS["dynamic"], SPACE)
    assert evo.satisfies(clipped, SPACE) and clipped[-1] == SPACE.max_factor


def test_mutation_moves_values_onto_the_grid_between_their_neighbours():
    rng = np.random.default_rng(0)
    parent = evo.into_space(SEEDS["yarn"], SPACE)
    for _ in range(200):
        child = evo.mutate(parent, SPACE, rng, {evo.key(parent)})
        assert evo.satisfies(child, SPACE) and not np.array_equal(child, parent)
        moved = child != parent
        on_grid = np.isclose((child[moved] - 1.0) / SPACE.step, np.round((child[moved] - 1.0) / SPACE.step))
        assert on_grid.all(), child[moved]


def test_crossover_children_take_each_value_from_a_parent():
    rng = np.random.default_rng(1)
    a = evo.into_space(SEEDS["ntk"], SPACE)
    b = evo.into_space(SEEDS["linear"], SPACE)
    mixed = 0
    for _ in range(100):
        child = evo.crossover(a, b, SPACE, rng, {evo.key(a), evo.key(b)})
        if child is None:  # only a suffix of b keeps a child monotone here, so some draws find none
            continue
        assert evo.satisfies(child, SPACE)
        assert np.all((child == a) | (child == b))
        assert (child == a).any() and (child == b).any()
        mixed += 1
    assert mixed > 10
    assert evo.crossover(a, a, SPACE, rng, set()) is None  # identical parents: the caller mutates instead


def test_a_known_optimum_is_approached_within_the_papers_budget():
    """Fitness = RMS of log(λ/λ*) for a sigmoid λ* (1 → 4, centred at pair 9) that no seed is: with the paper's
    sizes (population 64, 40 generations, ≤ 1,344 evaluations) the search gets within 4 % per factor of it, from
    17 % for the best seed (NTK). Broken operators (no mutation or no crossover progress) stay near 17 %."""
    j = np.arange(16)
    optimum = np.round(1 + 3.0 / (1 + np.exp(-(j - 9) / 1.5)), 2)
    assert evo.satisfies(optimum, SPACE)

    def rms_log_error(x):
        return float(np.sqrt(np.mean((np.log(x) - np.log(optimum)) ** 2)))

    best_seed = min(rms_log_error(evo.into_space(s, SPACE)) for s in SEEDS.values())
    assert best_seed > 0.15
    result = evo.evolve(SEEDS, SPACE, rms_log_error, evo.Settings(population=64, generations=40), seed=0)
    assert len(result.evaluated) <= 1344
    assert result.best_fitness < 0.04, result.best_fitness
    assert np.max(np.abs(np.log(result.best / optimum))) < 0.15


def test_a_non_finite_fitness_ranks_last():
    def sometimes_nan(x):
        return math.nan if x[0] > 1.5 else bumpy(x)

    result = evo.evolve(SEEDS, SPACE, sometimes_nan, evo.Settings(population=8, generations=3), seed=0)
    assert math.isfinite(result.best_fitness)
    assert all(r.fitness == evo.WORST_FITNESS for r in result.evaluated if r.factors[0] > 1.5)


@pytest.mark.parametrize("bad", [dict(n_pairs=0, max_factor=2.0), dict(n_pairs=4, max_factor=0.5),
                                 dict(n_pairs=4, max_factor=math.inf)])
def test_search_space_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        evo.SearchSpace(**bad)
