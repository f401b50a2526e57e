"""Where nothing is computed, how close ropeconv is to the floor: start-up, and conversions against cp and cp + sha256.

Start-up: wall and CPU seconds of the commands that touch no tensor (`--version`, `--help`, `methods`,
`inspect` of a HF folder and of a GGUF, `recipe check`, `extend --dry-run`) against a bare `python -c pass`.

Conversions, on synthetic llama-shaped checkpoints (fp16 and bf16, ~0.5 GB each by default): `extend --to
safetensors` and `extend --to gguf --outtype f16` (both --no-verify), each against `cp -r` of the same folder
and against `cp -r` followed by `openssl dgst -sha256` of every copied file (the floor of an output whose
manifest hashes every file; coreutils' sha256sum lacks SHA-NI on some machines and is no floor); llama.cpp's
own `convert_hf_to_gguf.py` on the same folder; and the GGUF retrofit of the f16 conversion against cp and cp
+ sha256 of that file. Medians of alternating runs in one session, page cache warm. A report: exits 0 on a miss.

    python -m bench.speed_bench --work work/bench [--size-gb 0.5] [--runs 5] [--llama-cpp-src DIR] [--json]

Inputs and outputs under WORK/speed/, the report in WORK/speed-report.md.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.extend_bench import alternate, bench_args, ensure_checkpoint, publish, reset

STARTUP_LIMIT_S = 0.3
SAFETENSORS_LIMIT = 1.2  # × cp + sha256
GGUF_LIMIT = 1.5
RETROFIT_LIMIT = 1.2
DTYPES = ("fp16", "bf16")


def rope() -> str:
    return str(Path(sys.executable).parent / "ropeconv")


# --- start-up -----------------------------------------------------------------------------------

def startup_commands(base: Path, gguf: Path, recipe: Path, dry_out: Path,
                     smol: Path | None = None) -> dict[str, list[str]]:
    """smol: a SmolLM2-135M HF folder (`make demo` builds it) — a real 49k-token tokenizer, where the synthetic
    checkpoints carry a tiny one."""
    r = rope()
    cmds = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "ropeconv --version": [r, "--version"],
        "ropeconv --help": [r, "--help"],
        "ropeconv methods": [r, "methods"],
        "ropeconv inspect HF_DIR": [r, "inspect", str(base)],
        "ropeconv inspect X.gguf": [r, "inspect", str(gguf)],
        "ropeconv recipe check": [r, "recipe", "check", str(recipe)],
        "ropeconv extend --dry-run": [r, "extend", str(base), "--method", "yarn", "--factor", "4", "--to",
                                      "safetensors,gguf", "--dry-run", "-o", str(dry_out)],
        "ropeconv extend X.gguf --dry-run": [r, "extend", str(gguf), "--method", "yarn", "--factor", "4", "--dry-run",
                                             "-o", str(dry_out.with_suffix(".gguf"))],
    }  # fmt: skip
    if smol is not None:
        cmds["ropeconv extend SMOLLM2 --dry-run"] = [r, "extend", str(smol), "--method", "yarn", "--factor", "4",
                                                     "--to", "safetensors,gguf", "--dry-run", "-o", str(dry_out)]
        cmds["ropeconv extend SMOLLM2 --to onnx --dry-run"] = [r, "extend", str(smol), "--method", "yarn", "--factor",
                                                               "4", "--to", "onnx", "--dry-run", "-o", str(dry_out)]
    return cmds


def time_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of cmd."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench_startup(cmds: dict[str, list[str]], runs: int) -> list[dict]:
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label in cmds}
    # as an installed package starts (pip compiles its .pyc): a PYTHONDONTWRITEBYTECODE in the bench's environment
    # would have every run compile ~100 modules from source (~0.07 s here) and the warm-up below warm nothing
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for cmd in cmds.values():  # one untimed run each: the first import compiles .pyc files
        time_child(cmd, env)
    for r in range(runs):
        for label in list(cmds) if r % 2 == 0 else list(reversed(cmds)):
            samples[label].append(time_child(cmds[label], env))
    return [{"command": label, "median_wall_s": round(statistics.median(w for w, _ in s), 3),
             "median_cpu_s": round(statistics.median(c for _, c in s), 3),
             "runs_wall_s": [round(w, 3) for w, _ in s]} for label, s in samples.items()]  # fmt: skip


# --- conversions --------------------------------------------------------------------------------

def hashed_copy(src: Path, dst: Path) -> list[str]:
    """cp, then openssl's sha256 of every file copied (one process per command, as a user would run it)."""
    target = f"{dst}/*" if src.is_dir() else str(dst)
    return ["sh", "-c", f"cp -r '{src}' '{dst}' && openssl dgst -sha256 {target} > /dev/null"]


def conversion_commands(src: Path, root: Path, llama_cpp: Path | None) -> dict[str, tuple[list[str], Path]]:
    r = rope()
    cmds = {
        "cp -r": (["cp", "-r", str(src), str(root / "cp-out")], root / "cp-out"),
        "cp -r + openssl sha256": (hashed_copy(src, root / "cp-sha-out"), root / "cp-sha-out"),
        "ropeconv extend --to safetensors": (
            [r, "extend", str(src), "--method", "yarn", "--factor", "4", "--no-verify", "-q", "-o",
             str(root / "st-out"), "--force"], root / "st-out"),
        "ropeconv extend --to gguf --outtype f16": (
            [r, "extend", str(src), "--method", "yarn", "--factor", "4", "--to", "gguf", "--outtype", "f16",
             "--no-verify", "-q", "-o", str(root / "gguf-out"), "--force"], root / "gguf-out"),
    }  # fmt: skip
    if llama_cpp is not None:
        cmds["llama.cpp convert_hf_to_gguf.py --outtype f16"] = (
            [sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(src), "--outtype", "f16", "--outfile",
             str(root / "llama-cpp.gguf")], root / "llama-cpp.gguf")
    return cmds


def retrofit_commands(gguf: Path, root: Path) -> dict[str, tuple[list[str], Path]]:
    out = root / "retrofit.gguf"
    return {
        "cp": (["cp", str(gguf), str(root / "cp.gguf")], root / "cp.gguf"),
        "cp + openssl sha256": (hashed_copy(gguf, root / "cp-sha.gguf"), root / "cp-sha.gguf"),
        "ropeconv extend X.gguf (retrofit)": (
            [rope(), "extend", str(gguf), "--method", "linear", "--factor", "2", "--no-verify", "-q", "-o", str(out),
             "--force"], out),
    }  # fmt: skip


def medians(samples: dict[str, list[tuple[float, float]]], cp: str, cp_sha: str) -> list[dict]:
    m = {label: statistics.median(s for s, _ in runs) for label, runs in samples.items()}
    return [{"command": label, "median_s": round(m[label], 3), "runs_s": [round(s, 3) for s, _ in runs],
             "to_cp": round(m[label] / m[cp], 2), "to_cp_sha256": round(m[label] / m[cp_sha], 2),
             "peak_rss_mb": round(max(r for _, r in runs), 1)} for label, runs in samples.items()]  # fmt: skip


def run_set(cmds: dict[str, tuple[list[str], Path]], src: Path, runs: int, cp: str, cp_sha: str) -> list[dict]:
    samples = alternate(cmds, src, runs)
    for _, out in cmds.values():
        reset(out)
    return medians(samples, cp, cp_sha)


def f16_gguf(src: Path, root: Path) -> Path:
    """ropeconv's f16 conversion of src, kept as the retrofit's input."""
    out = root / "retrofit-in"
    subprocess.run([rope(), "extend", str(src), "--method", "none", "--to", "gguf", "--outtype", "f16", "--no-verify",
                    "-q", "-o", str(out), "--force"], check=True)
    return next(out.glob("*.gguf"))


# --- the report ---------------------------------------------------------------------------------

def targets(report: dict) -> list[dict]:
    out = []
    for row in report["startup"]:
        if row["command"].startswith("ropeconv"):
            out.append({"target": f"{row['command']} wall s", "value": row["median_wall_s"], "limit": STARTUP_LIMIT_S})
    for dtype, rows in report["conversions"].items():
        by = {r["command"]: r for r in rows}
        out.append({"target": f"{dtype}: extend --to safetensors / (cp + sha256)",
                    "value": by["ropeconv extend --to safetensors"]["to_cp_sha256"], "limit": SAFETENSORS_LIMIT})
        out.append({"target": f"{dtype}: extend --to gguf f16 / (cp + sha256)",
                    "value": by["ropeconv extend --to gguf --outtype f16"]["to_cp_sha256"], "limit": GGUF_LIMIT})
    if report.get("retrofit"):
        by = {r["command"]: r for r in report["retrofit"]}
        out.append({"target": "GGUF retrofit / (cp + sha256)",
                    "value": by["ropeconv extend X.gguf (retrofit)"]["to_cp_sha256"], "limit": RETROFIT_LIMIT})
    for t in out:
        t["result"] = "PASS" if t["value"] <= t["limit"] else "MISS"
    return out


def markdown(report: dict) -> str:
    lines = [f"Start-up: median of {report['startup_runs']} alternating runs (wall and CPU seconds), .pyc warm.", "",
             "| command | wall s | CPU s | runs (wall) |", "|---|---:|---:|---|"]
    for r in report["startup"]:
        lines.append(f"| `{r['command']}` | {r['median_wall_s']:.3f} | {r['median_cpu_s']:.3f} | "
                     + ", ".join(f"{s:.2f}" for s in r["runs_wall_s"]) + " |")
    sets = [(f"{dtype} checkpoint {report['checkpoints'][dtype]['path']} "
             f"({report['checkpoints'][dtype]['bytes'] / 1e9:.2f} GB)", rows)
            for dtype, rows in report["conversions"].items()]
    if report.get("retrofit"):
        sets.append((f"GGUF retrofit of {report['retrofit_input']}", report["retrofit"]))
    for title, rows in sets:
        lines += ["", f"{title}: median of {report['runs']} alternating runs, page cache warm.", "",
                  "| command | median s | runs s | × cp | × cp + sha256 | peak RSS MB |", "|---|---:|---|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| `{r['command']}` | {r['median_s']:.2f} | " + ", ".join(f"{s:.2f}" for s in r["runs_s"])
                         + f" | {r['to_cp']:.2f} | {r['to_cp_sha256']:.2f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "| target | value | limit | result |", "|---|---:|---:|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['value']:g} | ≤ {t['limit']:g} | {t['result']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = bench_args("bench.speed_bench", __doc__, argv, lambda p: (
        p.add_argument("--llama-cpp-src", type=Path, help="llama.cpp sources holding convert_hf_to_gguf.py "
                       "(default: the installed llama-cpp-python's sdist, fetched once into --work)"),
        p.add_argument("--no-llama-cpp", action="store_true", help="leave llama.cpp's converter out"),
        p.add_argument("--skip-conversions", action="store_true", help="start-up only"),
        p.add_argument("--smollm2", type=Path, default=Path("work/smollm2-135m"), help="SmolLM2-135M HF folder for "
                       "the dry runs with a real tokenizer (default: work/smollm2-135m, made by `make demo`; left "
                       "out when missing)")), size_gb=0.5)
    from bench.convert_bench import llama_cpp_sources, with_tokenizer

    root = args.work / "speed"  # its own inputs: the other benchmarks' synthetic checkpoint stays at its 2 GB
    root.mkdir(parents=True, exist_ok=True)
    srcs = {dtype: with_tokenizer(ensure_checkpoint(root, args.size_gb, dtype)) for dtype in DTYPES}
    llama_cpp = None if args.no_llama_cpp else llama_cpp_sources(args.work, args.llama_cpp_src)
    report: dict = {"runs": args.runs, "checkpoints": {d: {"path": str(s), "bytes": sum(
        p.stat().st_size for p in s.iterdir())} for d, s in srcs.items()}, "conversions": {}}
    gguf = f16_gguf(srcs["fp16"], root)
    recipe = root / "startup.yaml"
    recipe.write_text(f"base:\n  path: {srcs['fp16']}\nmethod:\n  name: yarn\n  factor: 4\noutputs:\n"
                      f"  - format: safetensors\n  - format: gguf\n    outtype: q8_0\nout: {root / 'recipe-out'}\n")
    startup_runs = max(5, args.runs)  # cheap: at least 5, the medians are of short, noisy runs
    report["startup_runs"] = startup_runs
    smol = args.smollm2 if (args.smollm2 / "config.json").is_file() else None
    report["startup"] = bench_startup(startup_commands(srcs["fp16"], gguf, recipe, root / "dry-out", smol),
                                      startup_runs)
    if not args.skip_conversions:
        for dtype, src in srcs.items():
            print(f"bench: conversions of the {dtype} checkpoint", file=sys.stderr)
            report["conversions"][dtype] = run_set(conversion_commands(src, root, llama_cpp), src, args.runs,
                                                   "cp -r", "cp -r + openssl sha256")
        print("bench: GGUF retrofit", file=sys.stderr)
        report["retrofit_input"] = str(gguf)
        report["retrofit"] = run_set(retrofit_commands(gguf, root), gguf, args.runs, "cp", "cp + openssl sha256")
    report["targets"] = targets(report)
    table = markdown(report)
    publish(args, report, table, "speed-report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
