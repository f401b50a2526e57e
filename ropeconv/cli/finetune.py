"""ropeconv finetune: train a LoRA adapter for an extended context (PoSE, segments), on one process or many
(`accelerate launch` / `torchrun` run this same command in each process)."""

from __future__ import annotations

from pathlib import Path

import click

from ropeconv import methods
from ropeconv.cli.options import emit_json, method_option_decorators, method_options_for
from ropeconv.finetune.loop import PRECISIONS, SCHEDULES
from ropeconv.finetune.segments import DEFAULT_SEGMENTS
from ropeconv.finetune.train import FinetuneJob, run
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


SEGMENTS_EPILOG = """\b
Examples:
  # GPT-2 (learned absolute positions, 1024) to 4096: the table interpolated, then trained on 4 segments
  # of a 4096-token input per 1024-token window, each token at its original position
  ropeconv finetune segments ./gpt2 --method absolute --train-ctx 1024 --target-ctx 4096 \\
      --text books.txt --max-steps 1000 -o gpt2-4k-lora/
  ropeconv extend ./gpt2 --lora gpt2-4k-lora/ --method absolute --target-ctx 4096 -o gpt2-4k/
\b
  # the same on 8 GPUs, global batch 64, bf16, warm-up, checkpoints every 100 steps; --resume after a kill
  accelerate launch --num_processes 8 -m ropeconv.cli.main finetune segments ./Llama-2-7b-hf --method yarn \\
      --train-ctx 4096 --target-ctx 16384 --text books.txt --batch 64 --micro-batch 1 --warmup-steps 20 \\
      --schedule linear --gradient-checkpointing --save-every 100 -o llama2-16k-lora/
"""


def _method_options(fn):
    for decorator in reversed(method_option_decorators()):
        fn = decorator(fn)
    return fn


def _training_options(fn):
    """The options PoSE and segments share: data, budget, LoRA, batch, precision, schedule, checkpoints."""
    options = [
        click.option("--text", "text", type=click.Path(path_type=Path), required=True,
                     help="UTF-8 training text, tokenized with the base's tokenizer"),
        click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="adapter output directory"),
        click.option("--max-steps", "--steps", "steps", type=int, default=100, show_default=True,
                     help="optimizer steps (the schedule's length)"),
        click.option("--max-tokens", type=int, default=0, show_default=True,
                     help="token budget: stop after this many trained tokens (0: none; steps = min(max-steps, "
                          "max-tokens / (batch × train-ctx)))"),
        click.option("--lr", type=float, default=1e-4, show_default=True, help="AdamW peak learning rate"),
        click.option("--warmup-steps", type=int, default=0, show_default=True,
                     help="linear warm-up from 0 to --lr over this many steps"),
        click.option("--schedule", type=click.Choice(list(SCHEDULES)), default="constant", show_default=True,
                     help="the learning rate after warm-up"),
        click.option("--rank", type=int, default=8, show_default=True, help="LoRA rank r"),
        click.option("--alpha", type=float, default=16.0, show_default=True, help="LoRA alpha (scale alpha / r)"),
        click.option("--target-modules", default="", help="comma-separated names of the linear modules to adapt "
                     "[default: the base's attention projections, e.g. q_proj,k_proj,v_proj,o_proj]"),
        click.option("--batch", type=int, default=1, show_default=True,
                     help="global batch: samples per optimizer step over all processes"),
        click.option("--micro-batch", type=int, default=0, show_default=True,
                     help="samples per forward per process; gradient accumulation makes up the rest (0: no "
                          "accumulation)"),
        click.option("--precision", type=click.Choice(list(PRECISIONS)), default="auto", show_default=True,
                     help="auto: bf16 on a GPU that has it (else fp16), fp32 on the CPU"),
        click.option("--gradient-checkpointing", is_flag=True, help="recompute activations in the backward pass"),
        click.option("--checkpoint-dir", type=click.Path(path_type=Path), default=None,
                     help="training checkpoints [default: OUT.checkpoints beside -o; removed after success]"),
        click.option("--save-every", type=int, default=0, show_default=True,
                     help="steps between checkpoints (0: a tenth of the steps)"),
        click.option("--resume", is_flag=True, help="continue from the last complete checkpoint"),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="seeds the samples and the LoRA init (the same curve on any number of processes)"),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--force", is_flag=True, help="replace a previous ropeconv output or an empty folder (never "
                     "files ropeconv did not write), and an earlier run's checkpoints"),
        click.option("--rebase", is_flag=True, help="train under the method even though the base carries rope "
                     "scaling"),
        click.option("--json", "as_json", is_flag=True, help="machine-readable result on stdout"),
        click.option("-q", "--quiet", is_flag=True, help="no progress on stderr"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _shape_options(kind: str):
    def wrap(fn):
        fn = click.option("--method", "method_name", required=True,
                          type=click.Choice([m.NAME for m in methods.ordered() if m.NAME != "none"]),
                          help="position scaling applied during training (as `ropeconv extend --method` computes "
                               "it)")(fn)
        fn = click.option("--target-ctx", type=int, required=True,
                          help="target context N: relative distances up to N−1 are trained; the factor is N / "
                               "original")(fn)
        fn = click.option("--train-ctx", type=int, required=True,
                          help=f"{kind} training window n in tokens (8 ≤ n < target)")(fn)
        return click.argument("base", type=click.Path(path_type=Path))(fn)
    return wrap


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def finetune() -> None:
    """Fine-tune a base for an extended context; writes a PEFT LoRA adapter (needs ropeconv[finetune]). Runs as
    one process, or under `accelerate launch` / `torchrun` as many (data parallel; FSDP from accelerate's config
    file; a DeepSpeed config is refused)."""


@finetune.command(epilog=POSE_EPILOG)
@_shape_options("PoSE")
@_method_options
@_training_options
def pose(**kwargs):
    """PoSE (Zhu et al. 2023): train a LoRA on BASE (a HuggingFace directory) with --train-ctx-token windows
    whose position ids skip ahead so relative distances up to --target-ctx are seen, under --method scaled to
    --target-ctx. Writes a PEFT adapter directory plus ropeconv_rope.json (the scaling it was trained under),
    ready for `ropeconv extend BASE --lora ADAPTER` with the same --method and --target-ctx."""
    return _run("pose", kwargs)


@finetune.command(epilog=SEGMENTS_EPILOG)
@_shape_options("segments")
@click.option("--segments", "n_segments", type=int, default=DEFAULT_SEGMENTS, show_default=True,
              help="segments per sample: their lengths split --train-ctx equally")
@_method_options
@_training_options
def segments(**kwargs):
    """Segmented sequences (Karypis et al. 2023): each sample is --segments segments drawn in order from a
    --target-ctx-token stretch of the text, --train-ctx tokens in all, every token at its original position; the
    first segment starts at position 0, the gaps between segments (and the tail left out) are uniform over all
    ways to split the --target-ctx − --train-ctx tokens left out. Works for RoPE bases under any --method and for
    absolute-position bases (GPT-2, OPT) under --method absolute. Writes the same adapter as `finetune pose`."""
    return _run("segments", kwargs)


def _run(sampling: str, kw: dict) -> int:
    method_name = kw.pop("method_name")
    as_json, quiet = kw.pop("as_json"), kw.pop("quiet")
    modules = kw.pop("target_modules")
    fields = ("base", "text", "out", "train_ctx", "target_ctx", "n_segments", "steps", "max_tokens", "lr",
              "warmup_steps", "schedule", "rank", "alpha", "batch", "micro_batch", "precision",
              "gradient_checkpointing", "checkpoint_dir", "save_every", "resume", "seed", "device", "force", "rebase")
    job = FinetuneJob(sampling=sampling, method=method_name,
                      options=method_options_for(method_name, {k: v for k, v in kw.items() if k not in fields}),
                      target_modules=tuple(m.strip() for m in modules.split(",")) if modules else (),
                      **{k: kw[k] for k in fields if k in kw})
    result = run(job, Progress(enabled=not quiet))
    if not result.published:  # not the main process: the main one prints
        return 0
    if as_json:
        emit_json(result.to_json())
    else:
        r, t = result.rope, result.trained
        click.echo(f"wrote {result.out}: LoRA for {r['method']} {r['original_ctx']} → {r['target_ctx']} tokens "
                   f"({sampling} window {r['train_ctx']}), loss {t.losses[0]:.4f} → {t.losses[-1]:.4f} in "
                   f"{len(t.losses)} steps, {t.tokens_per_s:.0f} tokens/s on {t.processes} process"
                   f"{'es' * (t.processes > 1)}")
    return 0
