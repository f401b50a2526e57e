"""Parity at scale, measured: verify under a memory cap against uncapped, and the per-layer cost of a
verify extrapolated to Llama-3.1-8B and 70B shapes. A report, not a test: it exits 0 whatever it measures.

--capped: `ropeconv verify --tokens 256` of a synthetic ~1.8 GB bf16 llama (3.6 GB in float32) under
--max-memory cpu=1GiB against the same verify uncapped, alternating, with the peak anonymous RSS of each (RssAnon polled in /proc: the
process's own memory; the safetensors pages it maps are page cache) and the time ratio.

--layers: one decoder layer of each shape, float32, forward over --tokens tokens in one call (CPU: measured for
the 8B shape; the 70B row there is the 8B figure scaled by the layer's FLOPs, said so in the row; on a GPU both
are measured). The estimate of a verify with every layer resident is 2 sides × layers × forward time.

    python -m bench.scale_bench --work work/bench [--capped] [--layers] [--device cpu|cuda] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.extend_bench import ensure_checkpoint

CAPPED_SIZE_GB = 1.8  # bf16 on disk; 3.6 GB in float32 stays under this machine's ~4 GB-per-process rule
CAP = "1GiB"
# --max-memory caps the weights; a probe's activations and logits come on top (2048 tokens × a 32k vocabulary:
# ~0.3 GB of logits per side, plus the attention of the prefill), so the bench uses a short probe
CAPPED_TOKENS = 256
SHAPES = {  # Llama-3.1 layer shapes (hidden, intermediate, heads, kv heads, layers)
    "8B": (4096, 14336, 32, 8, 32),
    "70B": (8192, 28672, 64, 8, 80),
    "small": (576, 1536, 9, 3, 30),  # SmolLM2-135M, for the dry run
}


def rss_anon_peak(args: list[str], env=None) -> tuple[int, float, int]:
    """(exit code, seconds, peak RssAnon bytes) of a command, polled every 10 ms."""
    start = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak, status = 0, Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            line = next((x for x in status.read_text().splitlines() if x.startswith("RssAnon:")), None)
        except OSError:
            break
        if line:
            peak = max(peak, int(line.split()[1]) * 1024)
        time.sleep(0.01)
    _, err = proc.communicate()
    if proc.returncode:
        print(err.decode()[-2000:], file=sys.stderr)
    return proc.returncode, time.monotonic() - start, peak


def capped(work: Path, runs: int) -> dict:
    rope = str(Path(sys.executable).parent / "ropeconv")
    root = work / "scale"
    root.mkdir(parents=True, exist_ok=True)
    base = ensure_checkpoint(root, CAPPED_SIZE_GB)
    out = root / "yarn4"
    if not (out / "manifest.json").is_file():
        subprocess.run([rope, "extend", str(base), "--method", "yarn", "--factor", "4", "--no-verify", "-q",
                        "-o", str(out), "--force"], check=True)
    results: dict[str, list] = {"capped": [], "uncapped": []}
    for _ in range(runs):  # alternating, so both see the same machine load
        for label, extra in (("capped", ["--max-memory", f"cpu={CAP}"]), ("uncapped", [])):
            rc, seconds, peak = rss_anon_peak([rope, "verify", str(out), "-q", "--tokens", str(CAPPED_TOKENS), *extra])
            print(f"bench: verify {label}: exit {rc}, {seconds:.0f} s, peak RssAnon {peak / 2**30:.2f} GiB",
                  file=sys.stderr)
            results[label].append({"rc": rc, "seconds": seconds, "peak_anon_gib": peak / 2**30})
    weights = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    med = {k: sorted(r["seconds"] for r in v)[len(v) // 2] for k, v in results.items()}
    return {"bf16_gb": weights / 1e9, "float32_gb": 2 * weights / 1e9, "cap": CAP, "tokens": CAPPED_TOKENS,
            "runs": results,
            "time_ratio": med["capped"] / med["uncapped"]}


def layers(device: str, tokens: int, names: list[str]) -> dict:
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    rows: list[dict] = []
    measured: dict = {}
    for name in names:
        hidden, inter, heads, kv, n_layers = SHAPES[name]
        params = 2 * hidden * hidden + 2 * hidden * (hidden // heads * kv) + 3 * hidden * inter + 2 * hidden
        flops = 2 * params * tokens + 4 * hidden * tokens * tokens / 2  # weights, then causal attention
        if dev.type == "cpu" and name == "70B" and "8B" in measured:
            # 3.4 GB of float32 weights in one process is more than this shared machine allows
            forward = measured["8B"][0] * flops / measured["8B"][1]
            how = "scaled from 8B by FLOPs"
        else:
            config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                                 num_key_value_heads=kv, max_position_embeddings=max(tokens, 8192))
            config._attn_implementation = "sdpa"
            with torch.device(dev):
                layer = LlamaDecoderLayer(config, layer_idx=0).float().eval()
                rotary = LlamaRotaryEmbedding(config)
                x = torch.randn(1, tokens, hidden) * 0.02
                positions = torch.arange(tokens)[None]
            with torch.no_grad():
                emb = rotary(x, positions)
                layer(x, position_embeddings=emb)  # warm-up
                sync(dev)
                start = time.perf_counter()
                layer(x, position_embeddings=emb)
                sync(dev)
                forward = time.perf_counter() - start
            del layer, x
            measured[name] = (forward, flops)
            how = "measured"
        rows.append({"shape": name, "layers": n_layers, "layer_gib": params * 4 / 2**30, "tokens": tokens,
                     "forward_s": forward, "verify_resident_s": 2 * n_layers * forward, "how": how,
                     "device": device})
    return {"device": device, "rows": rows}


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("work/bench"))
    parser.add_argument("--capped", action="store_true")
    parser.add_argument("--layers", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, help="probe tokens per layer forward (default: cpu 1024, cuda 32768)")
    parser.add_argument("--shapes", default="8B,70B")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = {}
    if args.capped:
        result["capped"] = capped(args.work, args.runs)
    if args.layers or not args.capped:
        tokens = args.tokens or (32768 if args.device == "cuda" else 1024)
        result["layers"] = layers(args.device, tokens, args.shapes.split(","))
    if args.json:
        print(json.dumps(result["layers"] if list(result) == ["layers"] else result, indent=2))
        return 0
    if "capped" in result:
        c = result["capped"]
        for label, runs in c["runs"].items():
            r = runs[-1]
            print(f"verify {label:>8}: {r['seconds']:.0f} s, peak RssAnon {r['peak_anon_gib']:.2f} GiB")
        print(f"synthetic llama {c['bf16_gb']:.2f} GB bf16 ({c['float32_gb']:.1f} GB float32) under cpu={c['cap']}: "
              f"time ratio capped/uncapped {c['time_ratio']:.2f} (machine shared: noisy)")
    if "layers" in result:
        for r in result["layers"]["rows"]:
            print(f"{r['shape']:>5} layer on {r['device']}: {r['layer_gib']:.2f} GiB float32, forward of {r['tokens']} "
                  f"tokens {r['forward_s']:.3f} s ({r['how']}); {r['layers']} layers × 2 sides ≈ "
                  f"{r['verify_resident_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
