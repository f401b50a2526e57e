"""LongRoPE's claim on SmolLM2-135M, 8k → 16k: do searched factors beat PI and YaRN without fine-tuning?

    python -m bench.longrope_search_bench --work work/bench [--base work/smollm2-135m] [--json]

1. `ropeconv search longrope` on one public-domain novel (Pride and Prejudice), sized for 2 shared CPU cores
   (SIZES below: population, generations and the window the long search scores are cut down from the
   paper's 64 / 40 / target length; with a GPU the target is scored directly and 32k is searched too).
2. Perplexity on another novel (Emma) — the first window of 16k tokens and of 4k tokens — of the base with
   PI, YaRN (each with its own attention factor, as `extend --method linear|yarn` bakes it) and the searched
   LongRoPE factors (short ones at 4k, long ones at 16k, LongRoPE's attention factor), and of the unscaled
   base at 4k. Every plan is the one `ropeconv extend` would bake, scored through the parity reference
   (one model, plans swapped), so the figures are what the artifacts compute.
3. Writes WORK/longrope-search.md and .json, and the searched factors WORK/smollm2-135m-longrope-16k.factors.json
   (recipes/smollm2-135m-longrope-16k.factors.json is a copy of one such run).

The texts are Jane Austen's novels as Debian's r-cran-janeaustenr package ships them (Project Gutenberg texts,
public domain); `make bench` installs the package and writes them with Rscript. A report: exits 0 whichever
way the comparison goes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

ORIGINAL, TARGET = 8192, 16384
# (population, generations, long-search window, short generations, short window). CPU: sized for ~40 min on 2
# idle cores (there a 10k-token forward of SmolLM2-135M takes ~1–2 min, a 16k one ~3–5 min); the population is
# the four seeds, one generation adds a mutant and a crossover, and the short factors stay 1.0 (the base's own
# frequencies, where a non-fine-tuned model is at home). GPU: the target itself is scored, and 32k is searched too.
SIZES: dict[str, dict] = {"cpu": dict(population=4, generations=1, eval_ctx=10240, short_generations=0, short_ctx=4096),
         "cuda": dict(population=16, generations=10, eval_ctx=None, short_generations=3, short_ctx=4096)}
CALIBRATION, EVALUATION = "prideprejudice", "emma"
EVAL_LENGTHS = (16384, 4096)


def austen(name: str, folder: Path) -> Path:
    """One novel as UTF-8 text, from r-cran-janeaustenr through Rscript (no download: a Debian package)."""
    path = folder / f"{name}.txt"
    if path.is_file():
        return path
    if shutil.which("Rscript") is None:
        raise SystemExit("bench texts: Rscript not found; `make bench` installs r-cran-janeaustenr "
                         "(apt-get install --no-install-recommends r-cran-janeaustenr)")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["Rscript", "-e", f"writeLines(janeaustenr::{name})"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench texts: Rscript could not read janeaustenr::{name} ({done.stderr.strip()[:200]}); "
                         "install r-cran-janeaustenr")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(done.stdout, encoding="utf-8")
    tmp.replace(path)
    return path


def search(base: Path, text: Path, out: Path, work: Path, target: int, sizes: dict, device: str) -> dict:
    from ropeconv.progress import Progress
    from ropeconv.search.run import SearchJob, run

    job = SearchJob(base=base, target_ctx=target, text=text, out=out, seed=0, device=device,
                    cache_dir=work / "search-cache", force=True, **sizes)  # a rerun replaces its previous factors
    return run(job, Progress())


def plans_for(base: Path, factors: Path | None, target: int) -> dict:
    """name → plan: what `ropeconv extend --method linear|yarn|longrope` bakes, and the unscaled base."""
    from ropeconv import methods
    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.methods.base import ExtendRequest

    scheme = load_checkpoint(base).scheme
    request = ExtendRequest(target_ctx=target)
    plans = {"unscaled base": methods.get("none").plan(scheme, ExtendRequest()),
             "PI (linear)": methods.get("linear").plan(scheme, request),
             "YaRN": methods.get("yarn").plan(scheme, request)}
    if factors is not None:
        plans["LongRoPE (searched)"] = methods.get("longrope").plan(
            scheme, ExtendRequest(target_ctx=target, options={"factors": factors}))
    return plans


def evaluate(base: Path, text: Path, plans: dict, target: int, device: str, cache_dir: Path) -> list[dict]:
    """Perplexity of each plan at each length (the unscaled base only up to its own context), cached per
    (model, text, plan, length) so that a rerun, or another process that scored some of them, is reused."""
    from ropeconv.device.pick import pick_device
    from ropeconv.eval import cache as cache_mod
    from ropeconv.eval import runtimes as rt
    from ropeconv.search.fitness import Scorer

    dev = pick_device(device)
    ref = rt.resolve(base, "hf")
    tokenizer = rt.open_runtime(ref, dev)
    ids, bos = tokenizer.tokenize_plain(text.read_text(encoding="utf-8")), tokenizer.bos_id
    tokenizer.close()
    key = {"kind": "longrope-bench-ppl", "model_hash": rt.model_hash(ref), "device": dev.type,
           "text_sha256": hashlib.sha256(text.read_bytes()).hexdigest()}
    rows, scorer = [], None
    try:
        for length in sorted({*EVAL_LENGTHS, target}, reverse=True):
            if length > target:
                continue
            for name, plan in plans.items():
                if name == "unscaled base" and length > ORIGINAL:
                    continue
                cache = cache_mod.ResultCache(cache_dir, "bench-ppl", key)
                record_id = hashlib.sha256(json.dumps([plan.to_json(), length], sort_keys=True).encode()).hexdigest()
                record = cache.get(record_id)
                if record is None:
                    print(f"  ppl {name} at {length} tokens on {text.name} …", flush=True)
                    if scorer is None:
                        scorer = Scorer(base, plan, dev, ids, bos)
                    record = scorer.perplexity(plan, length)
                    cache.add(record_id, record)
                print(f"  ppl {name} at {length}: {record['ppl']:.3f} ({record['seconds']:.0f} s)", flush=True)
                rows.append({"model": name, "length": length, "ppl": record["ppl"], "nll": record["nll"],
                             "tokens": record["tokens"], "seconds": record["seconds"],
                             "attention_factor": plan.attention_factor})
    finally:
        if scorer is not None:
            scorer.close()
    return rows


def markdown(results: dict) -> str:
    lines = [f"## LongRoPE search on SmolLM2-135M, {ORIGINAL} → {results['target']} tokens", "",
             f"Calibration: {CALIBRATION} (search), evaluation: {EVALUATION} (first window of each length), "
             f"device {results['device']}, machine shared with other jobs.", ""]
    s = results["search"]
    sizes = results["sizes"]
    lines.append(f"Search: population {sizes['population']}, {sizes['generations']} generations, long search scored "
                 f"on {s['long']['length']}-token windows, "
                 + (f"short search {sizes['short_generations']} generation(s) at {s['short']['length']} tokens; "
                    if "length" in s["short"] else "short search skipped (short factors 1.0); ")
                 + f"{s['evaluations']['computed']} evaluations computed "
                 f"({s['evaluations']['cached']} from the cache) in {s['seconds']:.0f} s.")
    seeds = ", ".join(f"{k} {v:.3f}" for k, v in s["long"]["seed_ppl"].items())
    lines.append(f"Long search on {CALIBRATION} at {s['long']['length']}: seeds (LongRoPE attention factor) {seeds}; "
                 f"best after the search {s['long']['ppl']:.3f}.")
    lines += ["", "| model | attention factor | " + " | ".join(f"ppl @ {L}" for L in results["lengths"]) + " |",
              "|---|---|" + "---|" * len(results["lengths"])]
    models = list(dict.fromkeys(r["model"] for r in results["rows"]))
    for m in models:
        cells = []
        factor = next(r["attention_factor"] for r in results["rows"] if r["model"] == m)
        for L in results["lengths"]:
            r = next((r for r in results["rows"] if r["model"] == m and r["length"] == L), None)
            cells.append("—" if r is None else f"{r['ppl']:.3f}")
        lines.append(f"| {m} | {factor:.4f} | " + " | ".join(cells) + " |")
    lines += ["", f"Wall time of the whole benchmark: {results['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.longrope_search_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("work/bench"))
    parser.add_argument("--base", type=Path, default=Path("work/smollm2-135m"))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--baselines-only", action="store_true",
                        help="score PI, YaRN and the base only (cached; a full run then reuses them)")
    args = parser.parse_args(argv)
    import torch

    from ropeconv.parity import _quiet_transformers

    _quiet_transformers()
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    args.work.mkdir(parents=True, exist_ok=True)
    texts = args.work / "texts"
    calibration, evaluation = austen(CALIBRATION, texts), austen(EVALUATION, texts)
    targets = (TARGET, 2 * TARGET) if device == "cuda" else (TARGET,)
    if args.baselines_only:  # PI, YaRN and the base only (no search): fills the cache the full run reads
        for target in targets:
            evaluate(args.base, evaluation, plans_for(args.base, None, target), target, device, args.work / "eval-cache")
        return 0
    reports = []
    for target in targets:
        started = time.monotonic()
        sizes = SIZES[device]
        factors = args.work / f"smollm2-135m-longrope-{target // 1024}k.factors.json"
        print(f"search: {args.base} {ORIGINAL} → {target} on {calibration.name}, {sizes}", flush=True)
        found = search(args.base, calibration, factors, args.work, target, sizes, device)
        rows = evaluate(args.base, evaluation, plans_for(args.base, factors, target), target, device,
                        args.work / "eval-cache")
        results = {"target": target, "device": device, "sizes": sizes, "search": found, "rows": rows,
                   "lengths": sorted({L for L in (*EVAL_LENGTHS, target) if L <= target}, reverse=True),
                   "seconds": time.monotonic() - started}
        reports.append(results)
        print(markdown(results), flush=True)
    name = "longrope-search"
    (args.work / f"{name}.md").write_text("\n".join(markdown(r) for r in reports), encoding="utf-8")
    (args.work / f"{name}.json").write_text(json.dumps(reports, indent=2, default=str), encoding="utf-8")
    if args.json:
        print(json.dumps(reports, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
