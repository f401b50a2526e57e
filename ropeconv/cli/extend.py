"""ropeconv extend: apply a context-extension method and write the extended model."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from ropeconv import methods
from ropeconv.cli.options import (
    PATH,
    emit_json,
    group_decorators,
    group_values,
    method_option_decorators,
    method_options_for,
)
from ropeconv.cli.report import echo_published
from ropeconv.extend.dispatch import run
from ropeconv.extend.job import ExtendJob, formats_for
from ropeconv.extend.options import (
    GROUPS,
    BaseOptions,
    CardOptions,
    LoraOptions,
    OutputOptions,
    ParityOptions,
    build_job,
    format_groups,
)
from ropeconv.formats import is_gguf
from ropeconv.hub.push import PushFailed
from ropeconv.progress import Progress

EPILOG = """\b
Examples:
  # YaRN ×4 on a HF directory, proven against the base in transformers
  ropeconv extend ./SmolLM2-135M --method yarn --factor 4 -o smol-32k/
\b
  # a Hub id (fetched into huggingface_hub's cache: config, weights, tokenizer), at a revision, or a GGUF in a repo
  ropeconv extend HuggingFaceTB/SmolLM2-135M --method yarn --factor 4 -o smol-32k/
  ropeconv extend HuggingFaceTB/SmolLM2-135M@main --method yarn --factor 4 --to gguf -o smol-32k-gguf/
  ropeconv extend ORG/NAME-GGUF:model-Q4_K_M.gguf --method yarn --factor 4 -o model-32k.gguf
\b
  # Position Interpolation to an explicit length, larger shards, no parity run
  ropeconv extend ./Llama-2-7b-hf --method linear --target-ctx 32768 \\
      --max-shard-size 10GB --no-verify -o llama2-32k/
\b
  # LongRoPE factor sets from a JSON file; Llama-3.1 scaling
  ropeconv extend ./Phi-3-mini-4k --method longrope --factors factors.json --target-ctx 131072 -o phi3-128k/
  ropeconv extend ./Llama-3-8B --method llama3 --factor 8 -o llama3-64k/
\b
  # safetensors and a GGUF for llama.cpp from one pass over the tensors, both proven
  ropeconv extend ./SmolLM2-135M --method yarn --factor 4 --to safetensors,gguf --outtype q8_0 -o smol-32k/
  # k-quants and i-quants by llama.cpp's own quantizer, from ropeconv's float conversion
  ropeconv extend ./SmolLM2-135M --method yarn --factor 4 --to gguf --outtype q4_k_m -o smol-32k/
  ropeconv extend ./Llama-3-8B --method llama3 --factor 8 --to gguf --outtype iq4_xs --imatrix imatrix.gguf -o out/
\b
  # an ONNX decoder with KV cache for onnxruntime, proven on its CPU provider (and CUDA when present)
  ropeconv extend ./SmolLM2-135M --method yarn --factor 4 --to onnx -o smol-32k/
  ropeconv extend ./Phi-3-mini-4k --method longrope --factors f.json --target-ctx 131072 --to onnx --dtype fp16 -o out/
  ropeconv extend ./SmolLM2-135M --method yarn --factor 4 --to onnx --dtype int4 -o smol-32k-int4/
\b
  # ALiBi slopes interpolated (BLOOM, MPT): exact in ONNX; safetensors through ropeconv.runtime.apply
  ropeconv extend ./bloom-560m --method alibi --original-ctx 2048 --factor 4 --to safetensors,onnx -o bloom-8k/
  ropeconv extend ./mpt-7b --method alibi --dynamic --target-ctx 8192 --to onnx -o mpt-8k/
\b
  # a learned position table resampled (GPT-2, OPT); the base converted without extension
  ropeconv extend ./gpt2 --method absolute --factor 4 --to safetensors,gguf,onnx -o gpt2-4k/
  ropeconv extend ./bloom-560m --method none --original-ctx 2048 --to gguf -o bloom-gguf/
\b
  # merge a LoRA from a long-context fine-tune (trained under YaRN ×16) and export all three formats
  ropeconv extend ./Llama-2-7b-hf --lora ./pose-adapter --method yarn --factor 16 --to safetensors,gguf,onnx -o out/
  ropeconv extend ./base --lora a1/ --lora a2/ --lora-trained-with linear:4 --method linear --factor 4 -o out/
\b
  # a 70B proven under caps: layers over the GPUs, then 64 GiB of RAM, the rest read from disk; the probe
  # runs from position 0 to the full 32k target
  ropeconv extend ./Llama-3.1-70B --method yarn --factor 4 --max-memory cuda=70GiB,cpu=64GiB --full-length -o out/
\b
  # a name for the output (GGUF general.name and file name, card title) and the card's Hub metadata
  ropeconv extend ./SmolLM2-135M --method yarn --factor 4 --to safetensors,gguf --name SmolLM2-135M-YaRN-32k \\
      --base-model HuggingFaceTB/SmolLM2-135M --license apache-2.0 --tag long-context -o smol-32k/
\b
  # once proven and published, upload the output to a (private) Hub repo in one commit
  ropeconv extend ./SmolLM2-135M --method yarn --factor 4 --to safetensors,gguf -o smol-32k/ --push-to-hub me/smol-32k
\b
  # retrofit an existing (quantized) GGUF for llama.cpp: metadata rewritten, tensors copied byte for byte
  ropeconv extend model-Q4_K_M.gguf --method yarn --factor 4 -o model-32k.gguf
"""


def command() -> click.Command:
    """The extend command as the registries stand when it is asked for (cli.main asks on each use), so a format
    registered at run time, a test's, is in --to's help and brings its own options. The flags are the method
    modules' OPTIONS, then each options group's and each format's own fields (extend.options), which the recipe
    schema reads too."""
    from ropeconv.formats import FORMATS

    names = list(FORMATS)
    output = group_decorators(OutputOptions, "output", formats=", ".join(names), hf_default=names[0],
                              gguf_default=next(iter(formats_for(Path("base.gguf"))), names[0]))
    decorators = [
        click.argument("base", type=PATH),
        click.option("--method", "method_name", required=True, type=click.Choice([m.NAME for m in methods.ordered()]),
                     help="context-extension method (see `ropeconv methods`)"),
        click.option("--factor", type=float, help="extension factor s = target/original (> 1)"),
        click.option("--target-ctx", type=int, help="target context in tokens (instead of --factor)"),
        *group_decorators(BaseOptions, "base"),
        *method_option_decorators(),
        output[0],  # --to, then each format's own options
        *(d for fmt, group in format_groups().items() for d in group_decorators(group, fmt)),
        *group_decorators(LoraOptions, "lora"),
        *output[1:],
        *group_decorators(ParityOptions, "parity"),
        *group_decorators(CardOptions, "card"),
        click.option("--save-recipe", type=PATH,
                     help="also write this command line as a YAML recipe (`ropeconv recipe run FILE` repeats it)"),
        click.option("--dry-run", is_flag=True, help="check and print the plan, write nothing (but --save-recipe); a "
                     "GGUF plan checks the tokenizer's kind but reads no token list, so a vocabulary larger than the "
                     "embedding is found by the run itself"),
        click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout"),
        click.option("-q", "--quiet", is_flag=True, help="no progress on stderr"),
    ]
    fn = extend
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return click.command("extend", epilog=EPILOG)(fn)


def extend(base, method_name, factor, target_ctx, save_recipe, dry_run, as_json, quiet, **params):
    """Extend BASE (a HuggingFace model directory, a GGUF file, or a Hub id ORG/NAME[@REVISION][:FILE.gguf]) with
    --method and write it to --out."""
    values = {key: group_values(key, params) for key in GROUPS}
    format_values = {fmt: group_values(fmt, params) for fmt in format_groups()}
    if quiet:
        from ropeconv.hub.base import quiet_downloads

        quiet_downloads()  # a Hub base's download bars too
    job = build_job(base, method_name, factor=factor, target_ctx=target_ctx,
                    method_options=method_options_for(method_name, params), values=values,
                    format_values=format_values)
    recipe: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if save_recipe is not None:  # checked now, written staged before the work starts, published when it succeeds
        from ropeconv.recipe.save import recipe_text, saving

        recipe = saving(save_recipe, recipe_text(job, save_recipe, values["output"]["max_shard_size"]))
    push_failed = None
    with recipe:
        if dry_run:
            return _dry_run(job, as_json)
        try:
            result = run(job, Progress(enabled=not quiet))
        except PushFailed as exc:
            push_failed = exc  # published: the recipe is saved with it, then the one line (exit 75)
    if push_failed is not None:
        raise push_failed
    # published (and the recipe saved): a stdout that cannot take the report is not "bad input, nothing written"
    if as_json:
        emit_json({
            "out": str(result.out),
            "plan": result.plan.to_json(),
            "files": list(result.files),
            "parity": result.parity.to_json() if result.parity else None,
            # one per format (safetensors, gguf, onnx order), then one per --verify-in engine
            "reports": [r.to_json() for r in (*result.reports, *result.engines)],
            "pushed": result.pushed.to_json() if result.pushed else None,
        }, published=result.out)
    else:
        p = result.plan
        echo_published(f"wrote {result.out}: {p.method} {p.original_ctx} → {p.target_ctx} tokens"
                       + (", parity passed" if result.parity else ", parity not checked (--no-verify)")
                       + (f"; pushed to {result.pushed.repo}" if result.pushed else ""), result.out)
    return 0


def _dry_run(job: ExtendJob, as_json: bool) -> int:
    """--dry-run: the plan checked and printed, nothing written (but --save-recipe)."""
    out = job.out
    if is_gguf(job.base):
        from ropeconv.extend import from_gguf

        g = from_gguf.prepare(job)
        data = {"plan": g.plan.to_json(), "set": {k: v[1] for k, v in g.set_fields.items()},
                "drop": sorted(g.drop_keys), "add_tensors": sorted(g.add_tensors), "out": str(out)}
        if as_json:
            emit_json(data)
        else:
            click.echo(f"{g.plan.method}: {g.plan.original_ctx} → {g.plan.target_ctx} tokens; would set "
                       f"{', '.join(k for k in data['set'] if not k.startswith('ropeconv.'))}"
                       + (f" and add {', '.join(data['add_tensors'])}" if data["add_tensors"] else "")
                       + "; nothing written (--dry-run)")
        return 0
    from ropeconv.extend import from_hf

    prepared = from_hf.prepare(job, dry_run=True)
    data = {"plan": prepared.plan.to_json(), "config": prepared.hf_config, "out": str(out)}
    if as_json:
        emit_json(data)
    else:
        p = prepared.plan
        extra = f"attention factor {p.attention_factor:.6g}, " if p.kind == "rope" else f"{p.kind} positions, "
        click.echo(f"{p.method}: {p.original_ctx} → {p.target_ctx} tokens (×{p.factor:g}), "
                   f"{extra}{p.length_rule.value}")
        click.echo(f"would write {out} as {', '.join(job.formats)} ({len(prepared.checkpoint.tensors)} tensors, "
                   f"{prepared.checkpoint.total_bytes / 1e6:.1f} MB); nothing written (--dry-run)")
    return 0
