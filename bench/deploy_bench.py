"""Benchmark what people deploy, on SmolLM2-135M: ONNX prefill and decode against PyTorch SDPA and against
onnxruntime-genai's own model builder, and HF → Q4_K_M against llama.cpp's converter followed by its quantizer.

Reported, all in one run on the same CPU (each measurement in its own process, alternating which goes first):
- prefill seconds at each length (default 2k, 8k, 32k; last position's logits only) and peak RSS, for
  ropeconv's ONNX (YaRN ×4; fp32 and int4) in onnxruntime, transformers with SDPA attention (float32, the
  safetensors output of the same extension) and onnxruntime-genai's builder output for the same base (fp32 and
  int4; unscaled: the builder cannot declare YaRN for llama, and its graph stops at the base's 8192 tokens, so it
  has no 32k row); ratios to SDPA; the 32k row also against the budget weights + KV cache + 2 GB;
- decode tokens/s after a prefill of the first length, same runtimes;
- `ropeconv extend --to gguf --outtype q4_k_m` against llama.cpp's convert_hf_to_gguf.py (f32, as ropeconv
  stages this f32 checkpoint) then llama.cpp's quantizer (llama_model_quantize, the function behind
  llama-quantize): seconds and peak RSS.
A report: always exits 0.

    python -m bench.deploy_bench --work work/bench [--lengths 2048,8192,32768] [--decode 32] [--runs 1] [--json]
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.convert_bench import llama_cpp_sources
from bench.extend_bench import bench_args, measure, publish, reset
from bench.onnx_bench import smollm2

GENAI_CONTEXT = 8192  # the base's max_position_embeddings: the builder's cos/sin caches end there

# One runtime, one prompt length, in a fresh process: prefill (last logits only), then optional decode steps.
# Peak RSS over the prefill is reset-then-read through /proc (VmHWM); RSS before the run is the loaded model.
WORKER = r'''
import json, sys, time
import numpy as np
kind, path, n, decode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024
ids = np.random.default_rng(0).integers(16, 49152, (1, n))
if kind.startswith("ort"):
    import onnxruntime as ort
    o = ort.SessionOptions(); o.log_severity_level = 3
    sess = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    past = {i.name: i for i in sess.get_inputs() if i.name.startswith("past_key_values.")}
    outs = [o.name for o in sess.get_outputs()]
    def step(tokens, start, cache):
        feeds = {"input_ids": tokens, "position_ids": np.arange(start, start + tokens.shape[1])[None],
                 "attention_mask": np.ones((1, start + tokens.shape[1]), np.int64), "num_logits_to_keep": np.array(1)}
        feeds.update(cache or {k: np.zeros((1, v.shape[1], 0, v.shape[3]), np.float32) for k, v in past.items()})
        r = dict(zip(outs, sess.run(None, feeds)))
        return r["logits"][0, -1], {k: r[k.replace("past_key_values.", "present.")] for k in past}
    step(ids[:, :16], 0, None)  # warm-up: first-call allocations
    before = status("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")
    t = time.perf_counter(); logits, cache = step(ids, 0, None); prefill = time.perf_counter() - t
    peak = status("VmHWM:")
    t = time.perf_counter()
    for i in range(decode):
        logits, cache = step(np.array([[logits.argmax()]]), n + i, cache)
    per_token = (time.perf_counter() - t) / decode if decode else None
elif kind == "torch-sdpa":
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    x = torch.from_numpy(ids)
    model(input_ids=x[:, :16], use_cache=True, logits_to_keep=1)  # warm-up
    before = status("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")
    t = time.perf_counter(); out = model(input_ids=x, use_cache=True, logits_to_keep=1); prefill = time.perf_counter() - t
    peak = status("VmHWM:")
    t = time.perf_counter()
    for i in range(decode):
        out = model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
    per_token = (time.perf_counter() - t) / decode if decode else None
else:  # onnxruntime-genai's own loop over its builder's model
    import onnxruntime_genai as og
    model = og.Model(path)
    warm = og.GeneratorParams(model); warm.set_search_options(max_length=17, do_sample=False)
    og.Generator(model, warm).append_tokens(ids[:, :16].astype(np.int32))  # warm-up
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=min(n + decode, %(context)d), do_sample=False)
    gen = og.Generator(model, params)
    before = status("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")
    t = time.perf_counter(); gen.append_tokens(ids.astype(np.int32)); prefill = time.perf_counter() - t
    peak = status("VmHWM:")
    t = time.perf_counter(); steps = 0
    while decode and not gen.is_done():
        gen.generate_next_token(); steps += 1
    per_token = (time.perf_counter() - t) / steps if steps else None
print(json.dumps({"prefill_s": prefill, "peak_rss_mb": peak, "loaded_rss_mb": before,
                  "decode_tokens_per_s": 1 / per_token if per_token else None}))
''' % {"context": GENAI_CONTEXT}  # noqa: UP031 - a script whose own braces stay literal


def exports(base: Path, root: Path) -> dict[str, Path]:
    """ropeconv's outputs (fp32 with its safetensors twin for torch, int4) and the genai builder's."""
    rope = str(Path(sys.executable).parent / "ropeconv")
    models: dict[str, Path] = {}
    for dtype, formats in (("fp32", "safetensors,onnx"), ("int4", "onnx")):
        out = root / f"deploy-{dtype}"
        if not (out / "onnx" / "model.onnx").is_file():
            subprocess.run([rope, "extend", str(base), "--method", "yarn", "--factor", "4", "--to", formats,
                            "--dtype", dtype, "--no-verify", "-q", "-o", str(out), "--force"], check=True)
        models[f"ort-{dtype}"] = out / "onnx" / "model.onnx"
        if dtype == "fp32":
            models["torch-sdpa"] = out
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        return models
    for precision in ("fp32", "int4"):
        out = root / f"genai-builder-{precision}"
        if not (out / "genai_config.json").is_file():
            done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(base), "-o",
                                   str(out), "-p", precision, "-e", "cpu", "-c", str(root / "genai-cache")],
                                  capture_output=True, text=True)
            if done.returncode:
                print(f"bench: onnxruntime-genai's builder failed ({precision}): {done.stderr.strip()[-300:]}",
                      file=sys.stderr)
                continue
        models[f"genai-builder-{precision}"] = out
    return models


def run_worker(kind: str, path: Path, n: int, decode: int) -> dict | None:
    done = subprocess.run([sys.executable, "-c", WORKER, kind, str(path), str(n), str(decode)], capture_output=True,
                          text=True)
    if done.returncode:
        print(f"bench: {kind} at {n} tokens failed: {done.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def latency(models: dict[str, Path], lengths: list[int], decode: int, runs: int) -> list[dict]:
    rows = []
    kinds = list(models)
    for n in lengths:
        samples: dict[str, list[dict]] = {k: [] for k in kinds}
        for r in range(runs):
            for kind in kinds if r % 2 == 0 else list(reversed(kinds)):
                if kind.startswith("genai") and n > GENAI_CONTEXT:
                    continue
                steps = decode if n == lengths[0] else 0
                print(f"bench: {kind} prefill {n}" + (f" + {steps} decode steps" if steps else ""), file=sys.stderr)
                result = run_worker(kind, models[kind], n, steps)
                if result:
                    samples[kind].append(result)
        sdpa = [s["prefill_s"] for s in samples.get("torch-sdpa", [])]
        for kind, got in samples.items():
            if not got:
                continue
            prefill = statistics.median(s["prefill_s"] for s in got)
            tok_s = [s["decode_tokens_per_s"] for s in got if s["decode_tokens_per_s"]]
            rows.append({
                "runtime": kind, "tokens": n, "runs": len(got), "prefill_s": round(prefill, 2),
                "prefill_ratio_to_sdpa": round(prefill / statistics.median(sdpa), 3) if sdpa else None,
                "peak_rss_mb": round(max(s["peak_rss_mb"] for s in got)),
                "loaded_rss_mb": round(min(s["loaded_rss_mb"] for s in got)),
                "decode_tokens_per_s": round(statistics.median(tok_s), 1) if tok_s else None,
            })  # fmt: skip
    return rows


def memory_budget(base: Path, n: int) -> dict:
    """weights + KV cache (float32) + 2 GB for an n-token prefill of this model."""
    config = json.loads((base / "config.json").read_text())
    kv = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"] * n * 4
    weights = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    return {"tokens": n, "weights_mb": round(weights / 2**20), "kv_cache_mb": round(kv / 2**20),
            "budget_mb": round((weights + kv) / 2**20 + 2048)}


QUANTIZE = ("import ctypes, sys, llama_cpp; p = llama_cpp.llama_model_quantize_default_params(); "
            "p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M; "
            "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))")


def q4_k_m(base: Path, root: Path, runs: int) -> list[dict]:
    """ropeconv (convert + llama.cpp's quantizer in one command) against llama.cpp's converter then quantizer."""
    rope = str(Path(sys.executable).parent / "ropeconv")
    converter = llama_cpp_sources(root, None) / "convert_hf_to_gguf.py"
    ours, staged, theirs = root / "q4km-ropeconv", root / "q4km-llama.cpp-f32.gguf", root / "q4km-llama.cpp.gguf"
    samples: dict[str, list[tuple[float, float]]] = {"ropeconv": [], "llama.cpp": []}
    for r in range(runs):
        for label in ("ropeconv", "llama.cpp") if r % 2 == 0 else ("llama.cpp", "ropeconv"):
            if label == "ropeconv":
                reset(ours)
                samples[label].append(measure([rope, "extend", str(base), "--method", "yarn", "--factor", "4",
                                               "--to", "gguf", "--outtype", "q4_k_m", "--no-verify", "-q", "-o",
                                               str(ours)]))
            else:
                reset(staged)
                reset(theirs)
                convert = measure([sys.executable, str(converter), str(base), "--outtype", "f32", "--outfile",
                                   str(staged)])
                quantize = measure([sys.executable, "-c", QUANTIZE, str(staged), str(theirs)])
                samples[label].append((convert[0] + quantize[0], max(convert[1], quantize[1])))
    rows: list[dict] = []
    for label, got in samples.items():
        rows.append({"command": label, "median_s": round(statistics.median(s for s, _ in got), 2),
                     "runs_s": [round(s, 2) for s, _ in got], "peak_rss_mb": round(max(m for _, m in got))})
    sizes = {"ropeconv": next(ours.glob("*.gguf")).stat().st_size, "llama.cpp": theirs.stat().st_size}
    for row in rows:
        row["gguf_bytes"] = sizes[row["command"]]
    for path in (ours, staged, theirs):
        reset(path)
    return rows


def markdown(report: dict) -> str:
    lines = [f"Model: {report['model']} (SmolLM2-135M), YaRN ×4 for ropeconv; CPU, {report['runs']} run(s) each, "
             "alternating; the machine was shared.", "",
             "| runtime | tokens | prefill s | ratio to SDPA | peak RSS MB | loaded RSS MB | decode tokens/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["latency"]:
        ratio = f"{r['prefill_ratio_to_sdpa']:.2f}" if r["prefill_ratio_to_sdpa"] else "—"
        tok = f"{r['decode_tokens_per_s']:.1f}" if r["decode_tokens_per_s"] else "—"
        lines.append(f"| {r['runtime']} | {r['tokens']} | {r['prefill_s']:.2f} | {ratio} | {r['peak_rss_mb']} | "
                     f"{r['loaded_rss_mb']} | {tok} |")
    b = report["budget"]
    lines += ["", f"Budget at {b['tokens']} tokens: weights {b['weights_mb']} MB + KV cache {b['kv_cache_mb']} MB + "
              f"2048 MB = {b['budget_mb']} MB (peak RSS above). genai-builder rows: unscaled base, its graph ends at "
              f"{GENAI_CONTEXT} tokens.", "",
              "| HF → Q4_K_M | median s | runs s | peak RSS MB | GGUF bytes |", "|---|---:|---|---:|---:|"]
    for r in report["q4_k_m"]:
        lines.append(f"| {r['command']} | {r['median_s']:.2f} | {', '.join(f'{s:.2f}' for s in r['runs_s'])} | "
                     f"{r['peak_rss_mb']} | {r['gguf_bytes']:,} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    def extra(parser):
        parser.add_argument("--lengths", default="2048,8192,32768", help="prefill lengths (default 2048,8192,32768)")
        parser.add_argument("--decode", type=int, default=32, help="decode steps after the first length (default 32)")

    args = bench_args("bench.deploy_bench", __doc__, argv, extra)
    lengths = [int(x) for x in args.lengths.split(",")]
    base = smollm2(args.work)
    started = time.time()
    models = exports(base, args.work)
    report = {
        "model": str(base), "runs": args.runs, "latency": latency(models, lengths, args.decode, args.runs),
        "budget": memory_budget(base, max(lengths)), "q4_k_m": q4_k_m(base, args.work, args.runs),
        "seconds": round(time.time() - started),
    }  # fmt: skip
    table = markdown(report)
    publish(args, report, table, "deploy.md")
    shutil.rmtree(args.work / "genai-cache", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
