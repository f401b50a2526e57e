"""Benchmark LoRA merge + extend against plain extend on the synthetic ~2 GB llama checkpoint.

A rank-64 adapter on every linear layer (q, k, v, o, gate, up, down: written in peft's format by hand,
so peft is not needed), merged while the tensors stream. Reported in one run on the same machine:
`extend --lora` time as a ratio to plain `extend` (both --no-verify), and the peak RSS of the merge
(target ≤ 768 MB). A report: always exits 0 on a miss.

    python -m bench.lora_bench --work work/bench [--size-gb 2.0] [--runs 3] [--json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.extend_bench import alternate, bench_args, ensure_checkpoint, markdown, publish, reset, rows_and_targets

RANK = 64
MAX_RSS_MB = 768
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def ensure_adapter(src: Path, root: Path) -> Path:
    """rank-64 factors for every linear weight of the synthetic checkpoint (bf16, as a bf16 fine-tune saves)."""
    import torch
    from safetensors.torch import save_file

    from ropeconv.checkpoint import load_checkpoint

    out = root / f"adapter-r{RANK}"
    if (out / "adapter_model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1)
    factors = {}
    for entry in load_checkpoint(src).tensors:
        module = entry.name.removesuffix(".weight")
        if not module.endswith(TARGETS):
            continue
        rows, cols = entry.shape
        key = f"base_model.model.{module}"
        factors[f"{key}.lora_A.weight"] = (torch.randn(RANK, cols, generator=gen) * 0.01).to(torch.bfloat16)
        factors[f"{key}.lora_B.weight"] = (torch.randn(rows, RANK, generator=gen) * 0.01).to(torch.bfloat16)
    save_file(factors, out / "adapter_model.safetensors")
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "target_modules": list(TARGETS),
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "modules_to_save": None, "base_model_name_or_path": str(src),
    }, indent=2))  # fmt: skip
    (out / "ropeconv_rope.json").write_text(json.dumps({"method": "yarn", "factor": 4.0}))
    return out


def commands(src: Path, adapter: Path, root: Path) -> dict:
    rope = str(Path(sys.executable).parent / "ropeconv")
    common = ["--method", "yarn", "--factor", "4", "--no-verify", "-q", "--force"]
    return {
        "ropeconv extend (plain)": ([rope, "extend", str(src), *common, "-o", str(root / "plain-out")],
                                    root / "plain-out"),
        f"ropeconv extend --lora (rank {RANK}, every linear)": (
            [rope, "extend", str(src), "--lora", str(adapter), *common, "-o", str(root / "lora-out")],
            root / "lora-out"),
    }


def main(argv: list[str] | None = None) -> int:
    args = bench_args("bench.lora_bench", __doc__, argv)
    src = ensure_checkpoint(args.work, args.size_gb)
    adapter = ensure_adapter(src, args.work)
    cmds = commands(src, adapter, args.work)
    samples = alternate(cmds, src, args.runs)
    for _, out in cmds.values():
        reset(out)
    plain = next(iter(cmds))
    rows, targets = rows_and_targets(samples, plain, "merge + extend", float("inf"), MAX_RSS_MB)
    targets[0]["target"] = "merge + extend time / plain extend time"
    targets[0]["limit_text"] = "reported"
    targets[0]["result"] = "—"
    report = {"checkpoint": str(src), "checkpoint_bytes": sum(p.stat().st_size for p in src.iterdir()),
              "runs": args.runs, "rows": rows, "targets": targets}
    table = markdown(report).replace("ratio to cp", "ratio to plain extend")
    publish(args, report, table, "lora.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
