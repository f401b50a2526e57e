"""ropeconv verify: prove an output computes what its manifest says, in its real runtime."""

from __future__ import annotations

import click

from ropeconv.cli.options import PATH, emit_json, full_length_option, max_memory_option
from ropeconv.errors import ParityError
from ropeconv.manifest import ChangedFiles
from ropeconv.parity import Tolerance
from ropeconv.progress import Progress
from ropeconv.verify import verify_output

EPILOG = """\b
Examples:
  ropeconv verify out/
  ropeconv verify out/ --base ./SmolLM2-135M --tokens 1024 --device cpu
  ropeconv verify out/ --json > parity.json   # exit 1 when outside tolerance
  ropeconv verify model-32k.gguf               # llama.cpp vs transformers on the base GGUF
  ropeconv verify out/                         # every format in out/ (safetensors, GGUF, ONNX)
  ropeconv verify out/onnx/model.onnx          # onnxruntime (CPU, and CUDA on a GPU) vs transformers
  ropeconv verify out/ --full-length           # positions 0 … target, prefilled in chunks through the KV cache
  ropeconv verify out/ --max-memory cpu=12GiB  # a model larger than RAM: the rest is read from disk
  ropeconv verify out/ --max-memory cuda:0=20GiB,cuda:1=20GiB,cpu=64GiB
  ropeconv verify out/ --base ./pickle-base --allow-pickle   # a base with pytorch_model.bin weights
  ROPECONV_TF4_PYTHON=/envs/tf4/bin/python ropeconv verify out/   # safetensors in transformers 5.x and 4.x
  ropeconv verify out/ --runtime vllm         # the safetensors output in vLLM (make vllm), not the own runtimes
  ropeconv verify out/ --runtime own --runtime vllm   # both
  ropeconv verify out/ --runtime mlx          # the safetensors output loaded by mlx-lm as it is (pip install mlx-lm)

A safetensors output runs in transformers 4.x as well (rows marked 4.x-) when a 4.x environment is there:
$ROPECONV_TF4_PYTHON (off: never), else .venv-tf4 beside the project (`make tf4`). The report's "ran:" line
says which versions ran.
"""

# --runtime's choice for the mlx-lm engine proving a safetensors folder (the runtime, not the mlx format's folder)
MLX_LM = "mlx"


@click.command(epilog=EPILOG)
@click.argument("out", type=PATH)
@click.option("--base", type=PATH, help="base checkpoint (default: the manifest's)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--tokens", type=int, help="probe length (default on a CPU 1.5× the original context, ≤ 2048)")
@full_length_option
@max_memory_option
@click.option("--max-abs-logit", type=float, default=Tolerance.max_abs_logit, show_default=True)
@click.option("--min-top1", type=float, default=Tolerance.min_top1, show_default=True)
@click.option("--allow-pickle", is_flag=True, help="accept pickle .bin weights in the base or the output "
              "(loaded with weights_only=True)")
@click.option("--runtime", "runtimes", multiple=True, type=click.Choice(["own", "vllm", MLX_LM]),
              help="where to prove it (repeatable): own = each format's own runtimes (the default); vllm = a "
              "safetensors output in vLLM's offline engine (float32, CPU), from .venv-vllm (`make vllm`) or "
              "$ROPECONV_VLLM_PYTHON; mlx = a safetensors output loaded by mlx-lm as it is (mlx on the CPU)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report on stdout")
@click.option("-q", "--quiet", is_flag=True, help="no progress on stderr")
def verify(out, base, device, tokens, full_length, max_memory, max_abs_logit, min_top1, allow_pickle, runtimes,
           as_json, quiet) -> int:
    """Compare OUT (an output directory, a .gguf or a model.onnx) in its runtime with the base weights under
    the intended rope parameters."""
    changed = None  # the output's files are not those its manifest records: told after the reports
    runtimes = set(runtimes) or {"own"}
    reports: list = []
    if "vllm" in runtimes:  # refused cells and a missing environment are told before anything runs
        from ropeconv.parity.vllm import preflight

        preflight(out, base)
    in_mlx = None
    if MLX_LM in runtimes:  # likewise: a cell mlx-lm misreads, mlx-lm missing
        from ropeconv.verify_mlx import resolve_checkpoint

        in_mlx = resolve_checkpoint(out, base)
    try:
        reports = [] if "own" not in runtimes else verify_output(
            out,
            base=base,
            device=device,
            tokens=tokens,
            tolerance=Tolerance(max_abs_logit=max_abs_logit, min_top1=min_top1),
            progress=Progress(enabled=not quiet),
            full_length=full_length,
            max_memory=max_memory,
            allow_pickle=allow_pickle,
        )
    except ChangedFiles as exc:
        reports, changed = exc.reports, exc
    if "vllm" in runtimes:
        from ropeconv.parity.vllm import verify_in_vllm

        in_vllm = verify_in_vllm([out], base=base, tokens=tokens, progress=Progress(enabled=not quiet).note)
        reports = reports + in_vllm
        moved = next((r.changed for r in in_vllm if r.changed), None)
        if changed is None and moved:
            changed = ChangedFiles(moved, reports)
    if in_mlx is not None:
        from ropeconv.verify_mlx import verify_checkpoint

        reports = reports + [verify_checkpoint(in_mlx, tokens=tokens, progress=Progress(enabled=not quiet).note,
                                               tolerance=Tolerance(max_abs_logit=max_abs_logit, min_top1=min_top1))]
        if changed is None and in_mlx.changed:
            changed = ChangedFiles(in_mlx.changed, reports)
    if as_json:
        # one artifact: its report; several (e.g. safetensors and gguf): a list, in the manifest's order
        emit_json(reports[0].to_json() if len(reports) == 1 else [r.to_json() for r in reports])
    else:
        click.echo("\n".join(r.format() for r in reports))
    failed = [r for r in reports if not r.passed]
    if failed:
        r = failed[0]
        also = f"; {changed}" if changed else ""
        if hasattr(r, "failure"):  # vLLM's report: log-probabilities, not logits
            raise ParityError(r.failure() + also)
        raise ParityError(f"parity failed in {r.failed_in()}: max |Δlogit| {r.max_abs_logit:.3g}, top-1 {r.top1:.1%}"
                          f"{also}")
    if changed:
        raise changed
    return 0
