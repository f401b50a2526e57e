"""Benchmark HF → GGUF f16 (`ropeconv extend --to gguf`) against `cp -r` and llama.cpp's own converter.

The synthetic ~2 GB bf16 llama checkpoint of bench.extend_bench gets a small SentencePiece tokenizer
(both converters need one). llama.cpp's `convert_hf_to_gguf.py` is run from the sources the installed
llama-cpp-python vendors (its sdist, fetched once from PyPI into the work folder when --llama-cpp-src
is not given), in this same environment and run. The issue's targets: faster than llama.cpp's
converter, at most 1.5x `cp -r`, peak RSS at most 512 MB. A report: exits 0 on a miss.

    python -m bench.convert_bench --work work/bench [--size-gb 2.0] [--llama-cpp-src DIR] [--json]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

from bench.extend_bench import alternate, bench_args, ensure_checkpoint, markdown, publish, reset

MAX_RATIO = 1.5
MAX_RSS_MB = 512
CP = "cp -r"
ROPECONV = "ropeconv extend --to gguf --outtype f16 --no-verify"
LLAMACPP = "llama.cpp convert_hf_to_gguf.py --outtype f16"


def llama_cpp_sources(work: Path, given: Path | None) -> Path:
    """vendor/llama.cpp of the installed llama-cpp-python's sdist (bench only: nothing is copied into ropeconv)."""
    if given is not None:
        root = given
    else:
        version = metadata.version("llama-cpp-python")
        root = work / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
        if not (root / "convert_hf_to_gguf.py").is_file():
            print(f"bench: fetching the llama-cpp-python {version} sdist for its converter", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                            "-d", str(work), f"llama-cpp-python=={version}"], check=True)
            with tarfile.open(work / f"llama_cpp_python-{version}.tar.gz") as tar:
                tar.extractall(work, filter="data")
    if not (root / "convert_hf_to_gguf.py").is_file():
        raise SystemExit(f"bench: no convert_hf_to_gguf.py under {root}")
    return root


def with_tokenizer(src: Path) -> Path:
    if not (src / "tokenizer.model").is_file():
        from ropeconv.fixtures.tokenizers import add_sentencepiece

        add_sentencepiece(src)
    return src


def commands(src: Path, root: Path, llama_cpp: Path) -> dict[str, tuple[list[str], Path]]:
    rope = str(Path(sys.executable).parent / "ropeconv")
    return {
        CP: (["cp", "-r", str(src), str(root / "cp-out")], root / "cp-out"),
        ROPECONV: ([rope, "extend", str(src), "--method", "yarn", "--factor", "4", "--to", "gguf", "--outtype",
                    "f16", "--no-verify", "-q", "-o", str(root / "convert-out"), "--force"], root / "convert-out"),
        LLAMACPP: ([sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(src), "--outtype", "f16",
                    "--outfile", str(root / "llama-cpp.gguf")], root / "llama-cpp.gguf"),
    }  # fmt: skip


def run_bench(src: Path, root: Path, llama_cpp: Path, runs: int) -> dict:
    cmds = commands(src, root, llama_cpp)
    samples = alternate(cmds, src, runs)
    for _, out in cmds.values():
        reset(out)
    median = {label: statistics.median(s for s, _ in runs_) for label, runs_ in samples.items()}
    rows: list[dict] = [{
        "command": label, "median_s": round(median[label], 3), "runs_s": [round(s, 3) for s, _ in runs_],
        "ratio_to_cp": round(median[label] / median[CP], 3), "peak_rss_mb": round(max(m for _, m in runs_), 1),
    } for label, runs_ in samples.items()]  # fmt: skip
    ours = rows[1]
    speedup = median[LLAMACPP] / median[ROPECONV]
    targets = [
        {"target": "convert time / cp time", "value": ours["ratio_to_cp"], "limit": MAX_RATIO,
         "result": "PASS" if ours["ratio_to_cp"] <= MAX_RATIO else "MISS"},
        {"target": "llama.cpp converter time / convert time", "value": round(speedup, 2), "limit": 1.0,
         "limit_text": "> 1", "result": "PASS" if speedup > 1 else "MISS"},
        {"target": "convert peak RSS (MB)", "value": ours["peak_rss_mb"], "limit": MAX_RSS_MB,
         "result": "PASS" if ours["peak_rss_mb"] <= MAX_RSS_MB else "MISS"},
    ]  # fmt: skip
    size = sum(p.stat().st_size for p in src.iterdir())
    return {"checkpoint": str(src), "checkpoint_bytes": size, "runs": runs, "rows": rows, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    args = bench_args("bench.convert_bench", __doc__, argv, lambda p: p.add_argument(
        "--llama-cpp-src", type=Path, help="llama.cpp sources holding convert_hf_to_gguf.py"))
    src = with_tokenizer(ensure_checkpoint(args.work, args.size_gb))
    report = run_bench(src, args.work, llama_cpp_sources(args.work, args.llama_cpp_src), args.runs)
    table = markdown(report)
    publish(args, report, table, "convert-report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
