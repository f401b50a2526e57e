"""ropeconv finetune: train a LoRA adapter for an extended context (PoSE)."""

from __future__ import annotations

from pathlib import Path

import click

from ropeconv import methods
from ropeconv.cli.options import emit_json, method_option_decorators, method_options_for
from ropeconv.finetune.train import DEFAULT_TARGET_MODULES, PoseJob, run
from ropeconv.progress import Progress

POSE_EPILOG = """\b
Examples:
  # a 2k PoSE window teaching relative distances up to 16k, YaRN ×8, LoRA on the attention projections
  ropeconv finetune pose ./Llama-2-7b-hf --train-ctx 2048 --target-ctx 16384 --method yarn \\
      --text books.txt --steps 1000 -o pose-16k-lora/
\b
  # then bake the adapter into the extended model under the same scaling, and prove it
  ropeconv extend ./Llama-2-7b-hf --lora pose-16k-lora/ --method yarn --target-ctx 16384 -o llama2-16k/
  ropeconv verify llama2-16k/
\b
  # Position Interpolation, a smaller LoRA on q/v only, on the CPU, machine-readable result
  ropeconv finetune pose ./SmolLM2-135M --train-ctx 512 --target-ctx 8192 --method linear \\
      --rank 4 --alpha 8 --target-modules q_proj,v_proj --device cpu --text notes.txt --json -o smol-lora/
"""


def _method_options(fn):
    for decorator in reversed(method_option_decorators()):
        fn = decorator(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def finetune() -> None:
    """Fine-tune a base for an extended context; writes a PEFT LoRA adapter (needs ropeconv[finetune])."""


@finetune.command(epilog=POSE_EPILOG)
@click.argument("base", type=click.Path(path_type=Path))
@click.option("--train-ctx", type=int, required=True, help="PoSE training window n in tokens (8 ≤ n < target)")
@click.option("--target-ctx", type=int, required=True,
              help="target context N: relative distances up to N−1 are trained; the rope factor is N / original")
@click.option("--method", "method_name", required=True,
              type=click.Choice([m.NAME for m in methods.ordered() if m.NAME != "none"]),
              help="RoPE scaling applied during training (as `ropeconv extend --method` computes it)")
@_method_options
@click.option("--text", "text", type=click.Path(path_type=Path), required=True,
              help="UTF-8 training text, tokenized with the base's tokenizer")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="adapter output directory")
@click.option("--steps", type=int, default=100, show_default=True, help="optimizer steps")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="AdamW learning rate (constant)")
@click.option("--rank", type=int, default=8, show_default=True, help="LoRA rank r")
@click.option("--alpha", type=float, default=16.0, show_default=True, help="LoRA alpha (scale alpha / r)")
@click.option("--target-modules", default=",".join(DEFAULT_TARGET_MODULES), show_default=True,
              help="comma-separated names of the linear modules to adapt")
@click.option("--batch", type=int, default=1, show_default=True, help="PoSE samples per step")
@click.option("--seed", type=int, default=0, show_default=True, help="seeds the samples and the LoRA init")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--force", is_flag=True, help="replace a previous ropeconv output or an empty folder (never files "
              "ropeconv did not write)")
@click.option("--rebase", is_flag=True, help="train under the method even though the base carries rope scaling")
@click.option("--json", "as_json", is_flag=True, help="machine-readable result on stdout")
@click.option("-q", "--quiet", is_flag=True, help="no progress on stderr")
def pose(base, train_ctx, target_ctx, method_name, text, out, steps, lr, rank, alpha, target_modules, batch, seed,
         device, force, rebase, as_json, quiet, **method_opts):
    """PoSE (Zhu et al. 2023): train a LoRA on BASE (a HuggingFace directory) with --train-ctx-token windows
    whose position ids skip ahead so relative distances up to --target-ctx are seen, under --method scaled to
    --target-ctx. Writes a PEFT adapter directory plus ropeconv_rope.json (the scaling it was trained under),
    ready for `ropeconv extend BASE --lora ADAPTER` with the same --method and --target-ctx."""
    job = PoseJob(
        base=base,
        text=text,
        out=out,
        train_ctx=train_ctx,
        target_ctx=target_ctx,
        method=method_name,
        options=method_options_for(method_name, method_opts),
        steps=steps,
        lr=lr,
        rank=rank,
        alpha=alpha,
        target_modules=tuple(m.strip() for m in target_modules.split(",")),
        batch=batch,
        seed=seed,
        device=device,
        force=force,
        rebase=rebase,
    )
    result = run(job, Progress(enabled=not quiet))
    if as_json:
        emit_json(result.to_json())
    else:
        r = result.rope
        click.echo(f"wrote {result.out}: LoRA for {r['method']} {r['original_ctx']} → {r['target_ctx']} tokens "
                   f"(PoSE window {r['train_ctx']}), loss {result.losses[0]:.4f} → {result.losses[-1]:.4f} in "
                   f"{len(result.losses)} steps")
    return 0
