"""ropeconv search: find a method's parameters for a base on the user's text (LongRoPE's evolutionary search)."""

from __future__ import annotations

from pathlib import Path

import click

from ropeconv.cli.options import emit_json, max_memory_option
from ropeconv.cli.report import echo_published
from ropeconv.progress import Progress
from ropeconv.search import limits

LONGROPE_EPILOG = """\b
Examples:
  # SmolLM2-135M (8k) to 16k: the paper's sizes (population 64, 40 generations: ≤ 1,344 evaluations)
  ropeconv search longrope ./SmolLM2-135M --target-ctx 16384 --text book.txt -o smol-16k.factors.json
  ropeconv extend ./SmolLM2-135M --method longrope --factors smol-16k.factors.json --target-ctx 16384 -o smol-16k/
\b
  # a small search on a CPU: 8 candidates, 3 generations, scored on 12k-token windows, short search at 4k
  ropeconv search longrope ./SmolLM2-135M --target-ctx 16384 --text book.txt --population 8 --generations 3 \\
      --eval-ctx 12288 --short-ctx 4096 --short-generations 1 --seed 1 -o smol-16k.factors.json
\b
  # on a GPU, two 128k windows per candidate, fitness values cached in ./cache (rerun to resume)
  ropeconv search longrope ./Phi-3-mini-4k --target-ctx 131072 --text books.txt --samples 2 --device cuda \\
      --cache-dir cache/ -o phi3-128k.factors.json
\b
Writes FILE (what `extend --method longrope --factors FILE` reads: short_factor, long_factor, and the search's
record under _search), FILE-stem.search.jsonl (one line per evaluated candidate: phase, generation, origin,
parents, factors, perplexity) and FILE-stem.search.png (the best perplexity per generation). Every fitness value
is cached as it is computed (--cache-dir, default ~/.cache/ropeconv/search): an interrupted search rerun with
the same command resumes and ends with the same factors; the same --seed gives the same result. The three files
are published together when the search ends; none of them replaces a file search did not write (--force replaces
a previous search's), the base or the --text.
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def search() -> None:
    """Search a method's parameters on a base model and a calibration text."""


@search.command(epilog=LONGROPE_EPILOG, short_help="LongRoPE's evolutionary search for per-pair rescale factors")
@click.argument("base", type=click.Path(path_type=Path))
@click.option("--target-ctx", type=int, required=True, help="the context to extend to (L'); s = L' / original")
@click.option("--text", type=click.Path(path_type=Path), required=True,
              help="UTF-8 calibration text, tokenized with the base's tokenizer; windows are cut from its start, and "
              f"only a start is read ({limits.TEXT_BYTES_PER_TOKEN} bytes per token the windows need, "
              f"{limits.MIN_TEXT_BYTES >> 20} to {limits.MAX_TEXT_BYTES >> 20} MiB)")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="the factors JSON file to write")
@click.option("--force", is_flag=True, help="replace a previous search's factors file, log and curve (never files "
              "search did not write)")
@click.option("--population", type=click.IntRange(limits.MIN_POPULATION, limits.MAX_POPULATION), default=64,
              show_default=True,
              help="candidates per generation P (parents P/2, mutants P/4, crossovers P/4)")
@click.option("--generations", type=click.IntRange(0, limits.MAX_GENERATIONS), default=40, show_default=True,
              help="generations of the long search")
@click.option("--short-generations", type=click.IntRange(0, limits.MAX_GENERATIONS),
              help="generations of the short search at --short-ctx (default generations/4; 0: short factors 1.0)")
@click.option("--seed", type=click.IntRange(0, limits.MAX_SEED), default=0, show_default=True,
              help="seeds the mutations and crossovers")
@click.option("--eval-ctx", type=int, help="tokens per window of the long search (default the target)")
@click.option("--short-ctx", type=int, help="tokens per window of the short search (default the original context)")
@click.option("--samples", type=click.IntRange(1, limits.MAX_SAMPLES), default=1, show_default=True,
              help="consecutive windows per evaluation (perplexity over all of them)")
@click.option("--max-factor", type=click.FloatRange(1, limits.MAX_FACTOR),
              help="largest factor λ_max in the search space (default 1.25·s)")
@click.option("--original-ctx", type=int, help="override the original context the config states")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@max_memory_option
@click.option("--cache-dir", type=click.Path(path_type=Path), help="fitness cache (default ~/.cache/ropeconv/search)")
@click.option("--json", "as_json", is_flag=True, help="the result document on stdout")
@click.option("-q", "--quiet", is_flag=True, help="no progress on stderr")
def longrope(base, target_ctx, text, out, force, population, generations, short_generations, seed, eval_ctx,
             short_ctx, samples, max_factor, original_ctx, device, max_memory, cache_dir, as_json, quiet) -> int:
    """LongRoPE (Ding et al. 2024): evolve per-pair rescale factors λ_j (each ≥ 1, non-decreasing from the highest
    to the lowest frequency) for BASE (a HuggingFace directory) to minimise the perplexity of --text at the
    target length, starting from PI, NTK, YaRN and dynamic NTK and mutants of them; then a short search at the
    original length for the short factors. Each candidate is scored in transformers with its plan installed in
    the once-loaded model (CUDA when present)."""
    from ropeconv.search.run import SearchJob, run

    job = SearchJob(base=base, target_ctx=target_ctx, text=text, out=out, original_ctx=original_ctx,
                    population=population, generations=generations, short_generations=short_generations, seed=seed,
                    eval_ctx=eval_ctx, short_ctx=short_ctx, samples=samples, max_factor=max_factor, device=device,
                    max_memory=max_memory, cache_dir=cache_dir, force=force)
    result = run(job, Progress(enabled=not quiet))
    if as_json:
        emit_json(result, published=out)
        return 0
    echo_published(_table(result), out)
    return 0


def _table(r: dict) -> str:
    lines = [f"LongRoPE factors for {r['base']}: {r['original_ctx']} → {r['target_ctx']} tokens "
             f"(attention factor {r['attention_factor']:.5f})"]
    for phase in ("long", "short"):
        p = r[phase]
        if "skipped" in p:
            lines.append(f"  short search skipped: {p['skipped']}")
            continue
        seeds = ", ".join(f"{k} {v:.4f}" for k, v in p["seed_ppl"].items())
        lines.append(f"  {phase} factors: ppl {p['ppl']:.4f} at {p['length']} tokens after {p['generations']} "
                     f"generations, {p['evaluations']} candidates (best seed {p['best_seed']} "
                     f"{p['seed_ppl'][p['best_seed']]:.4f}; seeds: {seeds})")
    e = r["evaluations"]
    lines.append(f"  {e['computed']} evaluations computed, {e['cached']} from the cache, {r['seconds']:.0f} s")
    f = r["files"]
    lines.append(f"wrote {f['factors']}, {f['log']} and {f['curve']}")
    return "\n".join(lines)
