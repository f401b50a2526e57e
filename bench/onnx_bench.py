"""Benchmark the ONNX export of SmolLM2-135M (YaRN ×4) and onnxruntime's latency against PyTorch eager.

Reported, all in one run on the same machine: export time and peak RSS of
`ropeconv extend --to onnx --no-verify`; prefill latency (one call over a prompt) and per-token decode
latency (one token per call through the KV cache, after a prefill) of onnxruntime's CPU provider and of
transformers in eager mode on the same CPU, as ratios. On a machine with CUDA (and onnxruntime-gpu),
the same on the GPU. A report: always exits 0.

    python -m bench.onnx_bench --work work/bench [--runs 5] [--prompt 1024] [--decode 32] [--json]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.extend_bench import bench_args, measure, publish, reset
from ropeconv.parity.runtimes.hf import cache_from

EXPORT = "ropeconv extend --method yarn --factor 4 --to onnx --no-verify"


def smollm2(work: Path) -> Path:
    from ropeconv.fixtures import smollm2 as fixture

    return fixture.materialize_hf(work.parent / "smollm2-135m" if work.name == "bench" else work / "smollm2-135m")


def export_times(base: Path, root: Path, runs: int) -> tuple[list[tuple[float, float]], Path]:
    rope = str(Path(sys.executable).parent / "ropeconv")
    out = root / "onnx-out"
    samples = []
    for _ in range(runs):
        reset(out)
        samples.append(measure([rope, "extend", str(base), "--method", "yarn", "--factor", "4", "--to", "onnx",
                                "--no-verify", "-q", "-o", str(out), "--force"]))
    return samples, out


def torch_model(base: Path, root: Path, device: str):
    """The same extension as transformers runs it (config.json declares YaRN), eager attention."""
    from transformers import AutoModelForCausalLM

    from ropeconv.cli.main import main as cli

    hf = root / "onnx-bench-hf"
    if not (hf / "config.json").is_file():
        cli(["extend", str(base), "--method", "yarn", "--factor", "4", "--no-verify", "-q", "-o", str(hf), "--force"])
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, attn_implementation="eager")
    return model.to(torch.device(device)).eval()  # type: ignore[arg-type]  # transformers types .to as a wrapped function


def timed(fn, runs: int, sync=lambda: None) -> float:
    fn()  # warm-up: allocations, kernel selection
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def torch_latency(model, ids: torch.Tensor, decode: int, runs: int, device: str) -> tuple[float, float]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ids = ids.to(device)
    prefill = timed(lambda: model(input_ids=ids, use_cache=True), runs, sync)

    def decode_loop():
        out = model(input_ids=ids, use_cache=True)
        start = time.perf_counter()
        for _ in range(decode):
            out = model(input_ids=out.logits[:, -1:].argmax(-1), use_cache=True, **cache_from(model, out))
        sync()
        return (time.perf_counter() - start) / decode

    return prefill, statistics.median(decode_loop() for _ in range(runs))


def ort_latency(model_path: Path, ids: torch.Tensor, decode: int, runs: int, provider: str) -> tuple[float, float]:
    from ropeconv.parity.runtimes import ort as ort_runtime

    decoder = ort_runtime.Decoder(ort_runtime.session(model_path, provider))
    ids_np = ids.numpy()
    positions = torch.arange(ids.shape[1])[None].numpy()

    def prefill():
        decoder.reset()
        return decoder.step(ids_np, positions)

    prefill_s = timed(prefill, runs)

    def decode_loop():
        logits = prefill()
        start = time.perf_counter()
        for _ in range(decode):
            token = logits[-1].argmax()
            logits = decoder.step(token.reshape(1, 1), np.array([[decoder.length]]))
        return (time.perf_counter() - start) / decode

    return prefill_s, statistics.median(decode_loop() for _ in range(runs))


def devices() -> list[tuple[str, str]]:
    """(torch device, onnxruntime provider) pairs this machine can run."""
    pairs = [("cpu", "cpu")]
    if torch.cuda.is_available():
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            pairs.append(("cuda", "cuda"))
    return pairs


def run_bench(work: Path, runs: int, prompt: int, decode: int) -> dict:
    base = smollm2(work)
    export, out = export_times(base, work, runs)
    ids = torch.randint(16, 49152, (1, prompt), generator=torch.Generator().manual_seed(0))
    latency = []
    for device, provider in devices():
        model = torch_model(base, work, device)
        torch_prefill, torch_decode = torch_latency(model, ids, decode, runs, device)
        del model
        ort_prefill, ort_decode = ort_latency(out / "onnx" / "model.onnx", ids, decode, runs, provider)
        latency.append({
            "device": device, "prompt_tokens": prompt, "decode_tokens": decode,
            "torch_prefill_s": round(torch_prefill, 4), "ort_prefill_s": round(ort_prefill, 4),
            "prefill_ratio": round(ort_prefill / torch_prefill, 3),
            "torch_decode_ms": round(1e3 * torch_decode, 2), "ort_decode_ms": round(1e3 * ort_decode, 2),
            "decode_ratio": round(ort_decode / torch_decode, 3),
        })  # fmt: skip
    return {
        "model": str(base), "runs": runs, "torch_threads": torch.get_num_threads(),
        "export": {"command": EXPORT, "median_s": round(statistics.median(s for s, _ in export), 2),
                   "runs_s": [round(s, 2) for s, _ in export], "peak_rss_mb": round(max(m for _, m in export)),
                   "onnx_bytes": (out / "onnx" / "model.onnx").stat().st_size},
        "latency": latency,
        "gpu": "none on this machine" if len(latency) == 1 else "cuda",
    }  # fmt: skip


def markdown(report: dict) -> str:
    e = report["export"]
    lines = [
        f"Model: {report['model']} (SmolLM2-135M, float32), YaRN ×4; median of {report['runs']} runs; torch threads "
        f"{report['torch_threads']}, onnxruntime default threads.",
        "",
        "| export | median s | runs s | peak RSS MB | model.onnx bytes |",
        "|---|---:|---|---:|---:|",
        f"| `{e['command']}` | {e['median_s']:.2f} | {', '.join(f'{s:.2f}' for s in e['runs_s'])} | "
        f"{e['peak_rss_mb']} | {e['onnx_bytes']:,} |",
        "",
        "| device | prompt | torch eager prefill s | onnxruntime prefill s | ratio | torch decode ms/token | "
        "onnxruntime decode ms/token | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["latency"]:
        lines.append(f"| {r['device']} | {r['prompt_tokens']} | {r['torch_prefill_s']:.3f} | {r['ort_prefill_s']:.3f} | "
                     f"{r['prefill_ratio']:.2f} | {r['torch_decode_ms']:.1f} | {r['ort_decode_ms']:.1f} | "
                     f"{r['decode_ratio']:.2f} |")
    lines += ["", f"Ratios are onnxruntime / PyTorch eager (below 1: onnxruntime faster). GPU: {report['gpu']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    def extra(parser):
        parser.add_argument("--prompt", type=int, default=1024, help="prefill length in tokens (default 1024)")
        parser.add_argument("--decode", type=int, default=32, help="decode steps timed per run (default 32)")

    args = bench_args("bench.onnx_bench", __doc__, argv, extra)
    report = run_bench(args.work, args.runs, args.prompt, args.decode)
    table = markdown(report)
    publish(args, report, table, "onnx.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
