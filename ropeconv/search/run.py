"""`ropeconv search longrope`: validate, tokenize, run the long search at the target length and the short search at
the original length, cache every fitness value as it is computed, and publish the factors file, the log and the
curve together at the end.

The fitness cache is one JSONL file per (model, text, evaluation settings) — ropeconv.eval's ResultCache — keyed
per candidate by its exact float64 values. The evolution draws the same candidates from the same seed whatever
the fitness values' source, so a rerun after an interruption reads the finished evaluations back and continues
to the same result; another seed or population reuses whatever candidates coincide.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ropeconv import __version__
from ropeconv.errors import InputError
from ropeconv.eval.cache import number
from ropeconv.eval.text import Text, read_text
from ropeconv.interrupts import raise_if_interrupted
from ropeconv.methods.base import ExtendRequest, Lengths, resolve_lengths
from ropeconv.positions import RopeScheme
from ropeconv.search import evolution as evo
from ropeconv.search import limits, publish
from ropeconv.search.publish import side_paths
from ropeconv.search.seeds import SEED_NAMES, seed_factors

PROTOCOL = "longrope-search-v1"  # bump when what a cached fitness value means changes
DEFAULT_POPULATION = 64
DEFAULT_GENERATIONS = 40


@dataclass(frozen=True)
class SearchJob:
    base: Path
    target_ctx: int
    text: Path
    out: Path  # the factors file; the log and the curve are written beside it
    original_ctx: int | None = None
    population: int = DEFAULT_POPULATION
    generations: int = DEFAULT_GENERATIONS
    short_generations: int | None = None  # default generations // 4; 0 skips the short search (factors 1.0)
    seed: int = 0
    eval_ctx: int | None = None  # the long search's window (default the target)
    short_ctx: int | None = None  # the short search's window (default the original context)
    samples: int = 1  # windows per evaluation
    max_factor: float | None = None  # λ_max (default 1.25·s)
    device: str | None = None
    max_memory: str | None = None  # --max-memory: the model placed by accelerate under these caps (disk beside out)
    cache_dir: Path | None = None
    force: bool = False  # replace a previous search's files (each proven search's, see search.publish)

    @property
    def short_generation_count(self) -> int:
        return self.generations // 4 if self.short_generations is None else self.short_generations


@dataclass(frozen=True)
class Prepared:
    scheme: RopeScheme
    lengths: Lengths
    eval_ctx: int
    short_ctx: int
    max_factor: float
    text: Text  # the start of --text that the search reads (ropeconv.search.limits.text_bytes)
    text_sha256: str  # of text.text: the whole file's when it was read whole
    log_path: Path
    curve_path: Path


@dataclass
class Phase:
    """One search (long or short) as it goes: its records, cached count, time."""

    name: str
    length: int
    records: list[dict] = field(default_factory=list)
    computed: int = 0
    cached: int = 0
    seconds: float = 0.0
    last: dict = field(default_factory=dict)  # the fitness record of the candidate just evaluated
    last_cached: bool = False


def prepare(job: SearchJob) -> Prepared:
    """Every check that needs no weights; writes nothing."""
    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.checkpoint.rope_config import describe_scaling
    from ropeconv.extend.job import is_gguf

    if is_gguf(job.base):
        raise InputError(f"{job.base}: search longrope needs a HuggingFace model directory (it scores candidates in "
                         "transformers with the base's own tokenizer); search on the HF checkpoint the GGUF came from")
    ckpt = load_checkpoint(job.base)
    scheme = ckpt.scheme
    if scheme.kind != "rope":
        raise InputError(f"{job.base}: {ckpt.arch.model_type} uses {scheme.kind} positions; LongRoPE rescales rotary "
                         "frequencies, so search longrope needs a RoPE model")
    if scheme.existing_scaling:
        raise InputError(f"{job.base} already carries rope scaling ({describe_scaling(scheme.existing_scaling)}); "
                         "search from the unscaled base")
    lengths = resolve_lengths(scheme, ExtendRequest(target_ctx=job.target_ctx, original_ctx=job.original_ctx))
    eval_ctx = job.eval_ctx if job.eval_ctx is not None else lengths.target_ctx
    if not lengths.original_ctx < eval_ctx <= lengths.target_ctx:
        raise InputError(f"--eval-ctx {eval_ctx} must be above the original context {lengths.original_ctx} (where "
                         f"the long factors apply) and at most the target {lengths.target_ctx}")
    short_ctx = job.short_ctx if job.short_ctx is not None else lengths.original_ctx
    if not 2 <= short_ctx <= lengths.original_ctx:
        raise InputError(f"--short-ctx {short_ctx} must be between 2 and the original context {lengths.original_ctx} "
                         "(where the short factors apply)")
    _check_sizes(job)
    max_factor = job.max_factor if job.max_factor is not None else evo.MAX_FACTOR_OVER_SCALE * lengths.factor
    if not (1 <= max_factor <= limits.MAX_FACTOR):  # NaN too
        given = "--max-factor" if job.max_factor is not None else "the default --max-factor 1.25·s ="
        raise InputError(f"{given} {max_factor:g}: the largest factor λ_max must be a number in "
                         f"[1, {limits.MAX_FACTOR:g}]")
    if job.out.is_dir():
        raise InputError(f"-o {job.out}: is a directory; give the factors file to write (e.g. {job.out}/factors.json)")
    if not job.out.parent.is_dir():
        raise InputError(f"-o {job.out}: folder {job.out.parent} does not exist")
    publish.check(job.out, job.force, [("base", job.base), ("--text file", job.text)])
    text = read_text(job.text, limits.text_bytes(max(eval_ctx, short_ctx), job.samples))
    log_path, curve_path = side_paths(job.out)
    return Prepared(scheme, lengths, eval_ctx, short_ctx, float(max_factor), text,
                    hashlib.sha256(text.text.encode("utf-8")).hexdigest(), log_path, curve_path)


def _check_sizes(job: SearchJob) -> None:
    """The bounds of ropeconv.search.limits (the CLI's option types hold the same): before anything is drawn."""
    for flag, value, low, high in (("--population", job.population, limits.MIN_POPULATION, limits.MAX_POPULATION),
                                   ("--generations", job.generations, 0, limits.MAX_GENERATIONS),
                                   ("--short-generations", job.short_generation_count, 0, limits.MAX_GENERATIONS),
                                   ("--samples", job.samples, 1, limits.MAX_SAMPLES),
                                   ("--seed", job.seed, 0, limits.MAX_SEED)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InputError(f"{flag} {value}: must be an integer from {low} to {high}")
    evaluations = max(evo.Settings(job.population, g).evaluations()
                      for g in (job.generations, job.short_generation_count))
    if evaluations > limits.MAX_EVALUATIONS:
        raise InputError(f"--population {job.population} with {max(job.generations, job.short_generation_count)} "
                         f"generations is {evaluations} evaluations, more than the {limits.MAX_EVALUATIONS} a search "
                         "may make (and its fitness cache hold): fewer generations or a smaller population")


def check_text_length(n_tokens: int, prep: Prepared, job: SearchJob, bos_id: int | None) -> None:
    from ropeconv.eval.ppl import window_tokens

    need = job.samples * window_tokens(max(prep.eval_ctx, prep.short_ctx), bos_id)
    if n_tokens < need:
        windows = f"{job.samples} windows" if job.samples > 1 else "one window"
        raise InputError(f"--text {job.text}: {n_tokens} tokens in this base's tokenizer{_text_part(prep.text)}; the "
                         f"search scores {windows} of {prep.eval_ctx} tokens from the start of the text, which needs "
                         f"{need}: give a longer text, or fewer --samples, or a shorter --eval-ctx")


def _text_part(text: Text) -> str:
    """How much of --text was read, when not all of it."""
    return "" if text.complete else f" (from its first {text.bytes_read} of {text.file_bytes} bytes)"


def cache_key(job: SearchJob, prep: Prepared, model_hash: str, device: str, phase: str, length: int) -> dict:
    """What a fitness value depends on besides the candidate: the model, the text, the scoring settings."""
    from ropeconv.methods.longrope import default_attention_factor

    return {"kind": PROTOCOL, "phase": phase, "model_hash": model_hash, "text_sha256": prep.text_sha256,
            "length": length, "samples": job.samples, "original_ctx": prep.lengths.original_ctx,
            "target_ctx": prep.lengths.target_ctx,
            "attention_factor": default_attention_factor(prep.lengths.factor, prep.lengths.original_ctx),
            "theta": prep.scheme.theta, "rotary_dim": prep.scheme.rotary_dim, "device": device}


def run(job: SearchJob, progress) -> dict[str, Any]:
    """The search; returns the result document (also the factors file's `_search` record)."""
    prep = prepare(job)
    with publish.locked(job.out):  # the whole run: a second search to this -o is refused, not raced
        return _run(job, prep, progress)


def _run(job: SearchJob, prep: Prepared, progress) -> dict[str, Any]:
    import torch  # noqa: F401  (the heavy imports only once the input is known to be good)

    from ropeconv.device.pick import pick_device
    from ropeconv.device.placement import budget, parse_max_memory
    from ropeconv.eval import cache as cache_mod
    from ropeconv.eval import plots
    from ropeconv.eval import runtimes as rt
    from ropeconv.methods.longrope import plan_from_factors
    from ropeconv.parity import _quiet_transformers
    from ropeconv.search.fitness import Scorer
    from ropeconv.search.plot import best_curve

    plots.require()
    _quiet_transformers()
    device = pick_device(job.device)
    placement = parse_max_memory(job.max_memory).beside(job.out)
    budget(placement, device)  # a cap the device cannot meet is refused before the text is read
    ref = rt.resolve(job.base, "hf")
    tokenizer = rt.open_runtime(ref, device)  # the tokenizer only: weights load lazily and never here
    text_ids = tokenizer.tokenize_plain(prep.text.text)
    bos_id = tokenizer.bos_id
    check_text_length(len(text_ids), prep, job, bos_id)
    model_hash = rt.model_hash(ref)
    cache_dir = job.cache_dir if job.cache_dir is not None else cache_mod.default_dir().parent / "search"
    n = prep.lengths
    request = ExtendRequest(target_ctx=n.target_ctx, original_ctx=n.original_ctx)
    ones = np.ones(prep.scheme.n_pairs)

    def plan_for(short, long):
        return plan_from_factors(prep.scheme, request, short, long)

    settings = evo.Settings(population=job.population, generations=job.generations)
    short_settings = evo.Settings(population=job.population, generations=job.short_generation_count)
    space = evo.SearchSpace(prep.scheme.n_pairs, prep.max_factor)
    seeds = seed_factors(prep.scheme, n.original_ctx, n.target_ctx)
    progress.note(f"search longrope: {job.base} from {n.original_ctx} to {n.target_ctx} tokens (s = {n.factor:g}), "
                  f"{prep.scheme.n_pairs} factors in [1, {prep.max_factor:g}], population {job.population}, "
                  f"{job.generations} generations (≤ {settings.evaluations()} evaluations at {prep.eval_ctx} tokens)"
                  + (f", then {short_settings.generations} at {prep.short_ctx} for the short factors"
                     if short_settings.generations else "")
                  + f", seed {job.seed}, {device.type}; {len(text_ids)} text tokens" + _text_part(prep.text))
    scorer = None
    started = time.monotonic()
    try:
        scorer = Scorer(job.base, plan_for(ones, ones), device, text_ids, bos_id, job.samples, placement,
                        progress.note)

        long_phase = Phase("long", prep.eval_ctx)
        long_cache = cache_mod.ResultCache(cache_dir, "longrope",
                                           cache_key(job, prep, model_hash, device.type, "long", prep.eval_ctx),
                                           check=fitness_record_problem)
        long = evo.evolve(seeds, space, _fitness(long_phase, long_cache, lambda f: plan_for(ones, f), scorer),
                          settings, job.seed, on_evaluated=_logger(long_phase, settings, progress),
                          on_generation=_generation_note(long_phase, settings, progress))

        short_phase = Phase("short", prep.short_ctx)
        short = None
        if short_settings.generations:
            short_cache = cache_mod.ResultCache(cache_dir, "longrope",
                                                cache_key(job, prep, model_hash, device.type, "short", prep.short_ctx),
                                                check=fitness_record_problem)
            short_seeds = {"original": ones, "long": long.best}
            short = evo.evolve(short_seeds, space, _fitness(short_phase, short_cache,
                                                            lambda f: plan_for(f, long.best), scorer),
                               short_settings, job.seed, on_evaluated=_logger(short_phase, short_settings, progress),
                               on_generation=_generation_note(short_phase, short_settings, progress))
    finally:
        if scorer is not None:
            scorer.close()
        tokenizer.close()
    elapsed = time.monotonic() - started
    _check_found(long, long_phase, space)
    _check_found(short, short_phase, space)

    short_best = short.best if short is not None else ones
    doc = {
        "method": "longrope", "base": str(job.base), "model_hash": model_hash, "ropeconv_version": __version__,
        "original_ctx": n.original_ctx, "target_ctx": n.target_ctx, "factor": n.factor,
        "attention_factor": plan_for(short_best, long.best).attention_factor,
        "text": job.text.name, "text_sha256": prep.text_sha256, "text_tokens": len(text_ids),
        "seed": job.seed, "population": job.population, "max_factor": prep.max_factor, "samples": job.samples,
        "long": _summary(long, long_phase, settings),
        "short": (_summary(short, short_phase, short_settings) if short is not None else
                  {"skipped": "--short-generations 0: the short factors are 1.0 (the base's own frequencies)"}),
    }
    factors = {"short_factor": [float(x) for x in short_best], "long_factor": [float(x) for x in long.best],
               "_search": doc}
    records = long_phase.records + short_phase.records
    title = f"LongRoPE search: {job.base.name} → {job.target_ctx} tokens, population {job.population}, seed {job.seed}"
    publish.publish(job.out, job.force, factors, records, lambda path: best_curve(path, long, short, title))
    return {**doc, "files": {"factors": str(job.out), "log": str(prep.log_path), "curve": str(prep.curve_path)},
            "evaluations": {"computed": long_phase.computed + short_phase.computed,
                            "cached": long_phase.cached + short_phase.cached},
            "seconds": round(elapsed, 1),
            "short_factor": factors["short_factor"], "long_factor": factors["long_factor"]}


def fitness_record_problem(record: dict) -> str | None:
    """Why a cached fitness record (Scorer.perplexity's) cannot be used, or None. Its numbers are finite already
    (eval.cache reads through ropeconv.jsontext); a candidate that scored no finite perplexity is cached as
    evolution.WORST_FITNESS with a null nll."""
    ppl, nll, tokens = record.get("ppl"), record.get("nll", ""), record.get("tokens")
    if not (number(ppl) and ppl > 0):
        return f"ppl {ppl!r} is not a perplexity (a number > 0)"
    if not (number(nll) and nll >= 0 or nll is None and ppl == evo.WORST_FITNESS):
        return f"nll {nll!r} is not a negative log-likelihood (a number ≥ 0; null only with the worst ppl)"
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        return f"tokens {tokens!r} is not a token count"
    return None


def _check_found(result: evo.SearchResult | None, phase: Phase, space: evo.SearchSpace) -> None:
    """Before anything is written: a best candidate that scored, and factors inside the search space (finite)."""
    if result is None:
        return
    if result.best_fitness >= evo.WORST_FITNESS:
        raise InputError(f"the {phase.name} search scored no candidate with a finite perplexity at {phase.length} "
                         "tokens (the base's logits are NaN or infinite on this text); nothing was written")
    assert evo.satisfies(result.best, space), f"{phase.name} factors outside the search space: {result.best}"


def _fitness(phase: Phase, cache, plan_of: Callable, scorer) -> Callable[[np.ndarray], float]:
    """The evolution's fitness: the cached perplexity, or a new one scored and appended to the cache at once."""

    def fitness(factors: np.ndarray) -> float:
        record_id = evo.key(factors)
        record = cache.get(record_id)
        raise_if_interrupted()  # a signal swallowed in a __del__ stops the search here, not after every generation
        if record is None:
            publish.refuse_link(cache.path)  # before the first value is computed, and before each append
            record = scorer.perplexity(plan_of(factors), phase.length)
            cache.add(record_id, record)
            phase.computed += 1
            phase.seconds += record["seconds"]
            phase.last_cached = False
        else:
            phase.cached += 1
            phase.last_cached = True
        phase.last = record
        return record["ppl"]

    return fitness


def _logger(phase: Phase, settings: evo.Settings, progress) -> Callable[[evo.Evaluated], None]:
    total = settings.evaluations()

    def on_evaluated(r: evo.Evaluated) -> None:
        best = min(x["ppl"] for x in phase.records) if phase.records else r.fitness
        best = min(best, r.fitness)
        phase.records.append({"phase": phase.name, "index": r.index, "generation": r.generation, "origin": r.origin,
                              "parents": list(r.parents), "length": phase.length, "ppl": r.fitness,
                              "nll": phase.last["nll"], "tokens": phase.last["tokens"], "cached": phase.last_cached,
                              "seconds": None if phase.last_cached else phase.last["seconds"],
                              "factors": [float(x) for x in r.factors]})
        how = "cached" if phase.last_cached else f"{phase.last['seconds']:.1f} s"
        progress.note(f"  {phase.name} search: generation {r.generation}/{settings.generations}, candidate "
                      f"{r.index + 1} (≤ {total}) {_origin_label(r.origin)}: ppl {_ppl(r.fitness)} (best {_ppl(best)}), "
                      f"{how}")

    return on_evaluated


def _generation_note(phase: Phase, settings: evo.Settings, progress) -> Callable[[int, float], None]:
    def note(generation: int, best: float) -> None:
        progress.note(f"{phase.name} search: generation {generation}/{settings.generations} done, best ppl {_ppl(best)}")

    return note


def _ppl(value: float) -> str:
    return "not finite (ranked worst)" if value >= evo.WORST_FITNESS else f"{value:.4f}"


def _origin_label(origin: str) -> str:
    if origin.startswith("seed:"):
        name = origin.split(":", 1)[1]
        return f"seed {SEED_NAMES.get(name, name)}"
    return origin


def _summary(result: evo.SearchResult, phase: Phase, settings: evo.Settings) -> dict:
    return {"length": phase.length, "generations": settings.generations, "ppl": result.best_fitness,
            "best_initial_ppl": result.best_initial_fitness, "best_seed": result.best_seed,
            "seed_ppl": dict(result.seed_fitness), "best_per_generation": list(result.best_per_generation),
            "evaluations": len(result.evaluated)}
