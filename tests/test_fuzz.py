"""Seeded mutation fuzz (issue 14): a few hundred mutants of a small real GGUF, and of a checkpoint's
config.json and safetensors header, through the readers, `inspect` and a planning step, each mutant in
a forked child with its address space capped (tests/fuzz_worker.py).

Every mutant must be accepted or refused with ropeconv's InputError (exit 2, one line) — never another
exception, never past the memory cap. Seeds are fixed; a failure prints the seed and the mutant's index,
and `python tests/fuzz_worker.py MODE BASE --seed S --only I` replays it alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
GGUF_SEED, GGUF_CASES = 1414, 300
CHECKPOINT_SEED, CHECKPOINT_CASES = 1415, 200


def fuzz(mode: str, base: Path, seed: int, cases: int) -> dict:
    proc = subprocess.run([sys.executable, str(HERE / "fuzz_worker.py"), mode, str(base), "--seed", str(seed),
                           "--cases", str(cases)], capture_output=True, text=True, timeout=600)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert results and results[-1].get("summary"), f"the worker died:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    summary = results[-1]
    failures = [r for r in results[:-1] if r["status"] != "ok"]
    for r in failures:
        print(f"FAILED seed {r['seed']} mutant {r['index']} ({r['mutation']}): {r['error']}\n{r.get('traceback', '')}\n"
              f"  replay: python tests/fuzz_worker.py {mode} {base} --seed {r['seed']} --only {r['index']}")
    refusals = sorted({str(v).split(": ", 1)[-1][:60] for r in results[:-1] if r["status"] == "ok"
                       for v in r["outcome"].values() if str(v).startswith("refused")})
    print(json.dumps(summary), f"\n{len(refusals)} distinct refusal openings, e.g.", *refusals[:8], sep="\n  ")
    assert not failures, f"{len(failures)} of {summary['cases']} mutants escaped (seed {seed}): " + \
        ", ".join(f"#{r['index']} {r['error'][:80]}" for r in failures[:5])
    assert summary["cases"] == cases and proc.returncode == 0, proc.stderr[-2000:]
    # the fuzz must reach both outcomes, or it exercises nothing
    assert summary["refused"] >= cases // 4 and summary["accepted"] >= 5, summary
    return summary


def test_gguf_mutation_fuzz(tiny_yarn_gguf):
    summary = fuzz("gguf", tiny_yarn_gguf, GGUF_SEED, GGUF_CASES)
    assert summary["max_peak_rss_kib"] < 64 << 10, summary


def test_checkpoint_config_and_header_fuzz(tiny_llama):
    summary = fuzz("checkpoint", tiny_llama, CHECKPOINT_SEED, CHECKPOINT_CASES)
    assert summary["max_peak_rss_kib"] < 64 << 10, summary
