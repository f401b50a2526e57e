"""Passkey demo in llama.cpp: SmolLM2-135M unscaled vs YaRN ×2, at ~11k tokens (beyond its 8k context).

    python -m bench.eval_demo [--work work] [--length 11k] [--trials 3] [--seed 0]

Makes two Q8_0 GGUFs from work/smollm2-135m with `ropeconv extend` (--no-verify: the demo is about the
evaluation; `ropeconv verify` proves them), runs `ropeconv eval passkey` on each (cached: a rerun reuses the
finished trials), and writes work/eval-demo/{table.md, results.json, passkey.png}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ropeconv.cli.main import cli, main

MODELS = {  # name → extend options
    "unscaled": ["--method", "none"],
    "yarn-x2": ["--method", "yarn", "--factor", "2"],
}


def _run(*args) -> None:
    print("$ ropeconv " + " ".join(map(str, args)), flush=True)
    rc = main([str(a) for a in args])
    if rc != 0:
        sys.exit(rc)


def build(base: Path, root: Path) -> dict[str, Path]:
    ggufs = {}
    for name, options in MODELS.items():
        out = root / "models" / name
        if not (out / "manifest.json").is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            _run("extend", base, *options, "--to", "gguf", "--outtype", "q8_0", "--no-verify", "-q", "-o", out)
        ggufs[name] = next(out.glob("*.gguf"))
    return ggufs


def plot(results: dict[str, dict], path: Path) -> None:
    from ropeconv.eval.plots import require

    plt = require()
    names = list(results)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    accuracies = [results[n]["summary"]["accuracy"] or 0.0 for n in names]
    bars = ax.bar(names, accuracies, color=["#c0504d", "#4f81bd"][: len(names)])
    for bar, n in zip(bars, names):
        s = results[n]["summary"]["per_length"]
        label = ", ".join(f"{r['hits']}/{r['trials']}" for r in s)
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02, label, ha="center", fontsize=9)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("passkey accuracy")
    lengths = ", ".join(str(L) for L in next(iter(results.values()))["settings"]["lengths"])
    ax.set_title(f"SmolLM2-135M in llama.cpp (Q8_0), {lengths} tokens", fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def table(results: dict[str, dict]) -> str:
    lines = ["| model | length | tokens | depth | key | output | hit |", "|---|---|---|---|---|---|---|"]
    for name, doc in results.items():
        for r in doc["trials"]:
            output = r["output"].replace("|", "\\|").replace("\n", "\\n")
            lines.append(f"| {name} | {r['length']} | {r['tokens']} | {r['depth']:.2f} | {r['key']} | "
                         f"`{output}` | {'yes' if r['hit'] else 'no'} |")
    lines += ["", "| model | accuracy |", "|---|---|"]
    for name, doc in results.items():
        s = doc["summary"]
        lines.append(f"| {name} | {sum(r['hits'] for r in s['per_length'])}/"
                     f"{sum(r['trials'] for r in s['per_length'])} ({s['accuracy']:.0%}) |")
    return "\n".join(lines) + "\n"


def main_demo(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("work"))
    parser.add_argument("--length", default="11k")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from ropeconv.cli.eval import eval_group

    if "eval" not in cli.commands:
        cli.add_command(eval_group)
    base = args.work / "smollm2-135m"
    if not (base / "config.json").is_file():
        from ropeconv.fixtures import smollm2

        print(f"materializing {base}", flush=True)
        smollm2.main([str(base)])
    root = args.work / "eval-demo"
    ggufs = build(base, root)
    results = {}
    for name, gguf in ggufs.items():
        _run("eval", "passkey", gguf, "--lengths", args.length, "--trials", args.trials, "--seed", args.seed,
             "--runtime", "gguf", "--device", "cpu", "-o", root / name)
        results[name] = json.loads((root / name / "passkey.json").read_text())
    (root / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (root / "table.md").write_text(table(results))
    plot(results, root / "passkey.png")
    print(table(results))
    print(f"wrote {root / 'table.md'}, {root / 'results.json'} and {root / 'passkey.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main_demo())
