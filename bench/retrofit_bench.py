"""Benchmark the GGUF retrofit (`ropeconv extend x.gguf`) against `cp` on a synthetic ~2 GB Q8_0 GGUF.

A retrofit rewrites a few metadata keys and copies every tensor's bytes unchanged, so the yardstick
is what copying the file costs. Targets: at most 1.2x the time of `cp`, with a peak RSS of at most
512 MB. After the timed runs the output's tensor bytes are checked against the source's. This is a
report, not a test: it exits 0 on a missed target, 1 if a command fails or a tensor's bytes differ.

    python -m bench.retrofit_bench --work work/bench [--size-gb 2.0] [--runs 3] [--json]
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.extend_bench import MAX_RSS_MB, RUNS, alternate, bench_args, markdown, publish, reset, rows_and_targets
from ropeconv.errors import RopeconvError
from ropeconv.gguf_io.reader import DEFAULT_ALIGNMENT, align_up, read_gguf, tensor_nbytes
from ropeconv.gguf_io.types import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from ropeconv.gguf_io.writer import GgufWriter, KvEntry, NewField, TensorInfo, build_header

MAX_RATIO = 1.2
HIDDEN, INTERMEDIATE, HEADS, HEAD_DIM, VOCAB, CONTEXT = 2048, 5632, 16, 128, 32000, 4096
Q8_0 = GGMLQuantizationType.Q8_0
F32 = GGMLQuantizationType.F32
FILE_TYPE_MOSTLY_Q8_0 = 7  # llama_ftype LLAMA_FTYPE_MOSTLY_Q8_0
GGUF_NAME = "synthetic.gguf"
CP_LABEL = "cp"
RETROFIT_LABEL = "ropeconv extend x.gguf --method yarn --factor 4 --no-verify"
HASH_CHUNK = 16 << 20


# --- the synthetic GGUF -------------------------------------------------------------------------

def layer_tensors(n: int) -> list[tuple[str, tuple[int, ...], GGMLQuantizationType]]:
    """One llama block as llama.cpp's converter names it; shapes in GGUF order (ne0 first)."""
    p, h, q, i = f"blk.{n}.", HIDDEN, HEADS * HEAD_DIM, INTERMEDIATE
    return [
        (p + "attn_norm.weight", (h,), F32),
        (p + "attn_q.weight", (h, q), Q8_0), (p + "attn_k.weight", (h, q), Q8_0),
        (p + "attn_v.weight", (h, q), Q8_0), (p + "attn_output.weight", (q, h), Q8_0),
        (p + "ffn_norm.weight", (h,), F32),
        (p + "ffn_gate.weight", (h, i), Q8_0), (p + "ffn_up.weight", (h, i), Q8_0),
        (p + "ffn_down.weight", (i, h), Q8_0),
    ]  # fmt: skip


def plan_tensors(n_layers: int) -> list[TensorInfo]:
    """Everything a llama GGUF holds, in the converter's order; norms stay F32 as llama-quantize keeps them."""
    specs: list[tuple[str, tuple[int, ...], GGMLQuantizationType]] = [("token_embd.weight", (HIDDEN, VOCAB), Q8_0)]
    for n in range(n_layers):
        specs += layer_tensors(n)
    specs += [("output_norm.weight", (HIDDEN,), F32), ("output.weight", (HIDDEN, VOCAB), Q8_0)]
    return [TensorInfo(name, shape, kind, tensor_nbytes(shape, kind)) for name, shape, kind in specs]


def layers_for(size_gb: float) -> int:
    outside = sum(t.nbytes for t in plan_tensors(0))
    per_layer = sum(t.nbytes for t in plan_tensors(1)) - outside
    return max(1, round((size_gb * 1e9 - outside) / per_layer))


def plan_fields(n_layers: int) -> list[NewField]:
    a, u32, f32 = "llama", GGUFValueType.UINT32, GGUFValueType.FLOAT32
    return [
        NewField("general.architecture", GGUFValueType.STRING, a),
        NewField("general.name", GGUFValueType.STRING, "ropeconv retrofit bench (random Q8_0)"),
        NewField(f"{a}.block_count", u32, n_layers),
        NewField(f"{a}.context_length", u32, CONTEXT),
        NewField(f"{a}.embedding_length", u32, HIDDEN),
        NewField(f"{a}.feed_forward_length", u32, INTERMEDIATE),
        NewField(f"{a}.attention.head_count", u32, HEADS),
        NewField(f"{a}.attention.head_count_kv", u32, HEADS),
        NewField(f"{a}.rope.dimension_count", u32, HEAD_DIM),
        NewField(f"{a}.rope.freq_base", f32, 10000.0),
        NewField(f"{a}.attention.layer_norm_rms_epsilon", f32, 1e-5),
        NewField(f"{a}.vocab_size", u32, VOCAB),  # no tokenizer: --no-verify means llama.cpp never loads it
        NewField("general.file_type", u32, FILE_TYPE_MOSTLY_Q8_0),
    ]


def random_tensor(info: TensorInfo, rng: np.random.Generator) -> np.ndarray:
    """Random bytes shaped like the type: Q8_0 blocks get a small finite f16 scale and random int8 quants."""
    if info.ggml_type == F32:
        return (1 + 0.02 * rng.standard_normal(info.nbytes // 4, dtype=np.float32)).view(np.uint8)
    block, block_bytes = GGML_QUANT_SIZES[Q8_0]  # 32 weights in 34 bytes: f16 d, then 32 x int8
    blocks = np.frombuffer(bytearray(rng.bytes(info.nbytes)), dtype=np.uint8).reshape(-1, block_bytes)
    scales = (rng.random(len(blocks), dtype=np.float32) * 0.01 / 127).astype("<f2")
    blocks[:, :2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(-1)


def expected_size(fields: Sequence[KvEntry], tensors: list[TensorInfo]) -> int:
    """What GgufWriter writes: the header, then each tensor padded to the alignment (the last one too)."""
    header, offsets = build_header(list(fields), tensors, DEFAULT_ALIGNMENT)
    return len(header) + (offsets[-1] + align_up(tensors[-1].nbytes, DEFAULT_ALIGNMENT) if tensors else 0)


def is_built(path: Path, fields: list[NewField], tensors: list[TensorInfo]) -> bool:
    """Same metadata, same tensor table and the exact size: cheap, and catches a changed --size-gb."""
    if not path.is_file():
        return False
    try:
        src = read_gguf(path)
    except RopeconvError:
        return False
    return (
        [f.raw for f in src.fields] == [f.pack() for f in fields]  # serialized bytes: f32 values round
        and [(t.name, t.shape, t.ggml_type) for t in src.tensors] == [(t.name, t.shape, t.ggml_type) for t in tensors]
        and src.file_size == expected_size(fields, tensors)
    )


def ensure_gguf(root: Path, size_gb: float) -> Path:
    """Build DIR/synthetic.gguf once and reuse it while it matches `size_gb`.

    Written with ropeconv's own streaming writer, one random tensor in memory at a time (<= 70 MB),
    into a temporary sibling renamed into place, so an existing file is always complete.
    """
    n_layers = layers_for(size_gb)
    fields, tensors = plan_fields(n_layers), plan_tensors(n_layers)
    out = root / GGUF_NAME
    if is_built(out, fields, tensors):
        return out
    tmp = root / f".{GGUF_NAME}.tmp"
    print(f"bench: writing {out} ({n_layers} layers, {expected_size(fields, tensors) / 1e9:.2f} GB)", file=sys.stderr)
    rng = np.random.default_rng(0)
    try:
        with GgufWriter(tmp, list[KvEntry](fields), tensors, DEFAULT_ALIGNMENT) as writer:
            for info in tensors:
                writer.write_tensor(info.name, random_tensor(info, rng))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# --- measuring ----------------------------------------------------------------------------------

def commands(src: Path, root: Path) -> dict[str, tuple[list[str], Path]]:
    rope = str(Path(sys.executable).parent / "ropeconv")
    return {
        CP_LABEL: (["cp", str(src), str(root / "cp.gguf")], root / "cp.gguf"),
        RETROFIT_LABEL: (
            [rope, "extend", str(src), "--method", "yarn", "--factor", "4", "--no-verify", "-q",
             "-o", str(root / "out.gguf"), "--force"],
            root / "out.gguf",
        ),
    }  # fmt: skip


def run_bench(src: Path, root: Path, runs: int = RUNS) -> dict:
    """Alternate the commands (swapping which goes first each round), keep the medians, then check the bytes."""
    cmds = commands(src, root)
    samples = alternate(cmds, src, runs)
    report = summarize(src, samples)
    report["tensor_check"] = compare_tensors(src, cmds[RETROFIT_LABEL][1])  # the last timed run's output
    for _, out in cmds.values():
        reset(out)
    return report


def summarize(src: Path, samples: dict[str, list[tuple[float, float]]]) -> dict:
    rows, targets = rows_and_targets(samples, CP_LABEL, "retrofit", MAX_RATIO, MAX_RSS_MB)
    return {"checkpoint": str(src), "checkpoint_bytes": src.stat().st_size, "runs": len(samples[CP_LABEL]),
            "rows": rows, "targets": targets}  # fmt: skip


def range_sha256(fd: int, offset: int, nbytes: int) -> str:
    digest = hashlib.sha256()
    end = offset + nbytes
    while offset < end:
        chunk = os.pread(fd, min(HASH_CHUNK, end - offset), offset)
        if not chunk:
            raise SystemExit(f"bench: file ended inside a tensor at byte {offset}")
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def compare_tensors(src_path: Path, out_path: Path) -> dict:
    """Every source tensor present in the output with the same type, shape and sha256 of its bytes."""
    src, out = read_gguf(src_path), read_gguf(out_path)
    differing = []
    src_fd, out_fd = os.open(src_path, os.O_RDONLY), os.open(out_path, os.O_RDONLY)
    try:
        for t in src.tensors:
            o = out.tensor(t.name)
            if (o is None or (o.ggml_type, o.shape, o.nbytes) != (t.ggml_type, t.shape, t.nbytes)
                    or range_sha256(src_fd, t.offset, t.nbytes) != range_sha256(out_fd, o.offset, o.nbytes)):
                differing.append(t.name)
    finally:
        os.close(src_fd)
        os.close(out_fd)
    names = {t.name for t in src.tensors}
    return {
        "identical": not differing, "tensors": len(src.tensors), "differing": differing,
        "added": [t.name for t in out.tensors if t.name not in names],
    }  # fmt: skip


# --- reporting ----------------------------------------------------------------------------------

def report_markdown(report: dict) -> str:
    check = report["tensor_check"]
    lines = [markdown(report).replace("Checkpoint:", "GGUF:", 1)]
    lines.append(f"tensor bytes identical: {'yes' if check['identical'] else 'no'} "
                 f"({check['tensors']} tensors compared by sha256"
                 + (f"; differing: {', '.join(check['differing'])}" if check["differing"] else "")
                 + (f"; added by the retrofit: {', '.join(check['added'])}" if check["added"] else "")
                 + ")\n")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = bench_args("bench.retrofit_bench", __doc__, argv)
    src = ensure_gguf(args.work, args.size_gb)
    report = run_bench(src, args.work, args.runs)
    table = report_markdown(report)
    publish(args, report, table, "retrofit-report.md")
    return 0 if report["tensor_check"]["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
