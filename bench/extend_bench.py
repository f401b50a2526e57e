"""Benchmark `ropeconv extend` against `cp -r` on a synthetic ~2 GB llama checkpoint.

Extending a checkpoint is mostly moving bytes, so the honest yardstick is what copying them costs.
The issue's targets: extend takes at most 1.3x the time of `cp -r`, with a peak RSS of at most
512 MB. This is a report, not a test: it exits 0 on a miss (and 1 only if a command fails).

    python -m bench.extend_bench --work work/bench [--size-gb 2.0] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

RUNS = 3
MAX_RATIO = 1.3
MAX_RSS_MB = 512
SHARD_BYTES = 1000**3  # HF's max_shard_size="1GB": a 2 GB model comes out as 2-3 shards
INDEX_NAME = "model.safetensors.index.json"
HIDDEN, INTERMEDIATE, HEADS, HEAD_DIM, VOCAB = 2048, 5632, 16, 128, 32000
# the synthetic checkpoint's weight type: safetensors dtype, config torch_dtype (bench.speed_bench also builds fp16)
DTYPES = {"bf16": ("BF16", "bfloat16"), "fp16": ("F16", "float16")}


# --- the synthetic checkpoint -------------------------------------------------------------------

def llama_config(size_gb: float, dtype: str = "bf16") -> dict:
    """A TinyLlama-shaped config whose layer count makes the bf16 (or fp16) weights about `size_gb` GB."""
    per_layer = 2 * (4 * HIDDEN * HEADS * HEAD_DIM + 3 * HIDDEN * INTERMEDIATE + 2 * HIDDEN)
    embeddings = 2 * (2 * VOCAB * HIDDEN)  # embed_tokens + untied lm_head
    layers = max(1, round((size_gb * 1e9 - embeddings) / per_layer))
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": DTYPES[dtype][1],
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": layers,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "head_dim": HEAD_DIM,
        "vocab_size": VOCAB, "max_position_embeddings": 4096, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2,
    }  # fmt: skip


def tensor_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes in the order LlamaForCausalLM's state dict lists them."""
    h, i, q = config["hidden_size"], config["intermediate_size"], config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (config["vocab_size"], h))]
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes += [
            (p + "self_attn.q_proj.weight", (q, h)), (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, q)),
            (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
            (p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
        ]  # fmt: skip
    return shapes + [("model.norm.weight", (h,)), ("lm_head.weight", (config["vocab_size"], h))]


def nbytes(shape: tuple[int, ...]) -> int:
    return 2 * math.prod(shape)  # bf16


def shard_layout(shapes: list, max_bytes: int) -> dict[str, list]:
    """Greedy packing into shards named the way transformers names them."""
    groups: list[list] = [[]]
    size = 0
    for name, shape in shapes:
        if groups[-1] and size + nbytes(shape) > max_bytes:
            groups, size = groups + [[]], 0
        groups[-1].append((name, shape))
        size += nbytes(shape)
    return {f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors": g for k, g in enumerate(groups)}


def safetensors_header(tensors: list, dtype: str = "bf16") -> bytes:
    """The 8-byte length + JSON header of a bf16 (or fp16) safetensors file, data area 8-byte aligned."""
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        header[name] = {"dtype": DTYPES[dtype][0], "shape": list(shape), "data_offsets": [offset, offset + nbytes(shape)]}
        offset += nbytes(shape)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_shard(path: Path, tensors: list, gen: torch.Generator, dtype: str = "bf16") -> None:
    """Written by hand, one random tensor at a time, so memory stays at one tensor (<= 262 MB)."""
    import torch  # only to build the checkpoint: bench.retrofit_bench shares the helpers below without it

    with open(path, "wb") as fh:
        fh.write(safetensors_header(tensors, dtype))
        for _, shape in tensors:
            data = (torch.randn(shape, generator=gen) * 0.02).to(getattr(torch, DTYPES[dtype][1]))
            fh.write(data.reshape(-1).view(torch.uint8).numpy().data)


def index_json(layout: dict[str, list]) -> dict:
    return {
        "metadata": {"total_size": sum(nbytes(s) for g in layout.values() for _, s in g)},
        "weight_map": {name: file for file, g in layout.items() for name, _ in g},
    }


def ensure_checkpoint(root: Path, size_gb: float, dtype: str = "bf16") -> Path:
    """Build DIR/synthetic once (about a minute for 2 GB) and reuse it while it matches `size_gb`.

    Built in a temporary sibling and renamed into place, so an existing directory is always complete.
    """
    config = llama_config(size_gb, dtype)
    layout = shard_layout(tensor_shapes(config), SHARD_BYTES)
    index = index_json(layout)
    name = "synthetic" if dtype == "bf16" else f"synthetic-{dtype}"
    out = root / name
    if is_built(out, config, layout, dtype):
        return out
    shutil.rmtree(out, ignore_errors=True)
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    import torch

    gen = torch.Generator().manual_seed(0)
    for file, tensors in layout.items():
        print(f"bench: writing {tmp / file}", file=sys.stderr)
        write_shard(tmp / file, tensors, gen, dtype)
    (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, out)
    return out


def is_built(out: Path, config: dict, layout: dict[str, list], dtype: str = "bf16") -> bool:
    """Same config, same index and every shard at its exact size: cheap, and catches a changed --size-gb."""
    if _reads_json(out / "config.json") != config or _reads_json(out / INDEX_NAME) != index_json(layout):
        return False
    for file, tensors in layout.items():
        size = len(safetensors_header(tensors, dtype)) + sum(nbytes(s) for _, s in tensors)
        if not (out / file).is_file() or (out / file).stat().st_size != size:
            return False
    return True


def _reads_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- measuring ----------------------------------------------------------------------------------

def warm_page_cache(src: Path) -> None:
    """Read every input file (src, or each file in it) once: no command pays for cold reads another did not."""
    for path in sorted(src.iterdir()) if src.is_dir() else [src]:
        with open(path, "rb", buffering=0) as fh:
            while fh.read(64 << 20):
                pass


# Runs one command and reports its time and its peak RSS. A fresh, small process is needed: Linux
# seeds an exec'd child's ru_maxrss with its parent's RSS at fork, which here includes torch; the
# wrapper's own ~12 MB is therefore the floor of the figure.
WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
seconds = time.perf_counter() - start
print(json.dumps({"rc": rc, "seconds": seconds, "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one command, timed inside the wrapper (not its startup)."""
    out = subprocess.run([sys.executable, "-I", "-c", WRAPPER, *cmd], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    if result["rc"]:
        raise SystemExit(f"bench: {' '.join(cmd)} exited {result['rc']}")
    return result["seconds"], result["maxrss_kb"] / 1024  # ru_maxrss is in KiB on Linux


def reset(path: Path) -> None:
    """Remove a previous output (directory or file) and flush dirty pages: no run pays for another's writeback."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    os.sync()


def commands(src: Path, root: Path) -> dict[str, tuple[list[str], Path]]:
    rope = str(Path(sys.executable).parent / "ropeconv")
    return {
        "cp -r": (["cp", "-r", str(src), str(root / "cp-out")], root / "cp-out"),
        "ropeconv extend --method yarn --factor 4 --no-verify": (
            [rope, "extend", str(src), "--method", "yarn", "--factor", "4", "--no-verify", "-q",
             "-o", str(root / "extend-out"), "--force"],
            root / "extend-out",
        ),
    }  # fmt: skip


def alternate(cmds: dict[str, tuple[list[str], Path]], src: Path, runs: int) -> dict[str, list[tuple[float, float]]]:
    """(seconds, peak RSS MB) per run of each command, alternating which goes first each round, every output
    removed before its run. The outputs of the last round are left for the caller to inspect and reset."""
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label in cmds}
    for _, out in cmds.values():
        reset(out)
    warm_page_cache(src)
    for r in range(runs):
        for label in list(cmds) if r % 2 == 0 else list(reversed(cmds)):
            cmd, out = cmds[label]
            reset(out)
            samples[label].append(measure(cmd))
    return samples


def run_bench(src: Path, root: Path, runs: int = RUNS) -> dict:
    cmds = commands(src, root)
    samples = alternate(cmds, src, runs)
    for _, out in cmds.values():
        reset(out)
    return summarize(src, samples)


def rows_and_targets(samples: dict[str, list[tuple[float, float]]], cp_label: str, what: str,
                     max_ratio: float, max_rss_mb: float) -> tuple[list[dict], list[dict]]:
    """Median rows (the second command against the first, cp) and PASS/MISS against the targets."""
    base = statistics.median(s for s, _ in samples[cp_label])
    rows: list[dict] = []
    for label, runs in samples.items():
        median = statistics.median(s for s, _ in runs)
        rows.append({
            "command": label, "median_s": round(median, 3), "runs_s": [round(s, 3) for s, _ in runs],
            "ratio_to_cp": round(median / base, 3), "peak_rss_mb": round(max(m for _, m in runs), 1),
        })  # fmt: skip
    measured = rows[1]
    targets = [
        {"target": f"{what} time / cp time", "value": measured["ratio_to_cp"], "limit": max_ratio,
         "result": "PASS" if measured["ratio_to_cp"] <= max_ratio else "MISS"},
        {"target": f"{what} peak RSS (MB)", "value": measured["peak_rss_mb"], "limit": max_rss_mb,
         "result": "PASS" if measured["peak_rss_mb"] <= max_rss_mb else "MISS"},
    ]  # fmt: skip
    return rows, targets


def summarize(src: Path, samples: dict[str, list[tuple[float, float]]]) -> dict:
    rows, targets = rows_and_targets(samples, "cp -r", "extend", MAX_RATIO, MAX_RSS_MB)
    size = sum(p.stat().st_size for p in src.iterdir())
    return {"checkpoint": str(src), "checkpoint_bytes": size, "runs": len(samples["cp -r"]),
            "rows": rows, "targets": targets}  # fmt: skip


# --- reporting ----------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    lines = [
        f"Checkpoint: {report['checkpoint']} ({report['checkpoint_bytes'] / 1e9:.2f} GB), "
        f"median of {report['runs']} alternating runs, page cache warm.",
        "",
        "| command | median s | runs s | ratio to cp | peak RSS MB |",
        "|---|---:|---|---:|---:|",
    ]
    for r in report["rows"]:
        runs = ", ".join(f"{s:.2f}" for s in r["runs_s"])
        lines.append(f"| `{r['command']}` | {r['median_s']:.2f} | {runs} | {r['ratio_to_cp']:.2f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "| target | value | limit | result |", "|---|---:|---:|---|"]
    for t in report["targets"]:
        limit = t.get("limit_text") or f"≤ {t['limit']:g}"
        lines.append(f"| {t['target']} | {t['value']:g} | {limit} | {t['result']} |")
    return "\n".join(lines) + "\n"


def bench_args(prog: str, doc: str, argv: list[str] | None, extra=None, size_gb: float = 2.0) -> argparse.Namespace:
    """The options every benchmark takes; extra(parser) adds its own."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="working directory (inputs, outputs, report)")
    parser.add_argument("--size-gb", type=float, default=size_gb, help=f"size of the synthetic input (default {size_gb})")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"measured runs per command (default {RUNS})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of markdown")
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.runs = max(1, args.runs)
    return args


def publish(args: argparse.Namespace, report: dict, table: str, name: str) -> None:
    """The markdown table to WORK/name, and to stdout (or the report as JSON with --json)."""
    (args.work / name).write_text(table)
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else table)


def main(argv: list[str] | None = None) -> int:
    args = bench_args("bench.extend_bench", __doc__, argv)
    src = ensure_checkpoint(args.work, args.size_gb)
    report = run_bench(src, args.work, args.runs)
    table = markdown(report)
    publish(args, report, table, "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
