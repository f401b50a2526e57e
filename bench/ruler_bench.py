"""RULER in llama.cpp: SmolLM2-135M unscaled (8k) next to YaRN ×2 and ×4, at 8k and 16k tokens (issue 30's report).

    python -m bench.ruler_bench [--work work] [--lengths 8k,16k] [--tasks all] [--trials 5] [--seed 0]

Makes three Q8_0 GGUFs from work/smollm2-135m with `ropeconv extend` (--no-verify: `ropeconv verify` proves them),
runs `ropeconv eval ruler` on each, one length at a time for every model before the next length (so a stopped run
leaves comparable columns), every trial cached under WORK/ruler-bench/cache (a rerun, or a rerun with more
--trials, reuses the finished ones), and writes WORK/ruler-bench/table.md: the mean string_match_all per task and
length for each model, with the trials behind each cell.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ropeconv.cli.main import main

MODELS = {  # name → extend options
    "base": ["--method", "none"],
    "yarn2": ["--method", "yarn", "--factor", "2"],
    "yarn4": ["--method", "yarn", "--factor", "4"],
}
TITLES = {"base": "unscaled (8k)", "yarn2": "YaRN ×2 (16k)", "yarn4": "YaRN ×4 (32k)"}


def _run(*args) -> int:
    print("$ ropeconv " + " ".join(map(str, args)), flush=True)
    return main([str(a) for a in args])


def build(base: Path, root: Path) -> dict[str, Path]:
    ggufs = {}
    for name, options in MODELS.items():
        out = root / name
        if not (out / "manifest.json").is_file():
            if _run("extend", base, *options, "--to", "gguf", "--outtype", "q8_0", "--no-verify", "-q",
                    "-o", out) != 0:
                sys.exit(1)
        ggufs[name] = next(out.glob("*.gguf"))
    return ggufs


def table(results: dict[str, dict[str, dict]], lengths: list[str]) -> str:
    """task × (length, model) of the summaries `eval ruler --json` wrote."""
    names = [n for n in MODELS if any(n in results[L] for L in lengths)]
    head = "| task | " + " | ".join(f"{L} {TITLES[n]}" for L in lengths for n in names) + " |"
    rows = [head, "|" + "---|" * (1 + len(lengths) * len(names))]
    tasks: list[str] = []
    for L in lengths:
        for doc in results[L].values():
            tasks += [c["task"] for c in doc["summary"]["per_task_length"] if c["task"] not in tasks]

    def cell(doc: dict | None, task: str | None) -> str:
        if doc is None:
            return "—"
        if task is None:
            score = doc["summary"]["average"]
            return "—" if score is None else f"**{score:.0%}**"
        found = next(c for c in doc["summary"]["per_task_length"] if c["task"] == task)
        return "—" if found["score"] is None else f"{found['score']:.0%} ({found['trials']})"

    for task in [*tasks, None]:
        rows.append(f"| {task or '**average**'} | "
                    + " | ".join(cell(results[L].get(n), task) for L in lengths for n in names) + " |")
    return "\n".join(rows) + "\n"


def run(work: Path, lengths: list[str], tasks: str, trials: int, seed: int) -> Path:
    from ropeconv.fixtures import smollm2

    root = work / "ruler-bench"
    ggufs = build(smollm2.materialize_hf(work / "smollm2-135m"), root)
    results: dict[str, dict[str, dict]] = {L: {} for L in lengths}
    for L in lengths:
        for name, gguf in ggufs.items():
            out = root / f"eval-{name}-{L}"
            doc_path = out / "ruler.json"
            if _run("eval", "ruler", gguf, "--lengths", L, "--tasks", tasks, "--trials", trials, "--seed", seed,
                    "--runtime", "gguf", "--device", "cpu", "-o", out, "--cache-dir", root / "cache") != 0:
                sys.exit(1)
            results[L][name] = json.loads(doc_path.read_text())
    text = table(results, lengths)
    (root / "table.md").write_text(text)
    print(text)
    return root / "table.md"


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("work"))
    p.add_argument("--lengths", default="8k,16k")
    p.add_argument("--tasks", default="all")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run(a.work, [x.strip() for x in a.lengths.split(",") if x.strip()], a.tasks, a.trials, a.seed)


if __name__ == "__main__":
    cli()
