"""ropeconv extend: apply a context-extension method and write the extended model."""

from __future__ import annotations

import contextlib
import math

import click

from ropeconv import methods
from ropeconv.cli.options import (
    PATH,
    emit_json,
    full_length_option,
    max_memory_option,
    method_option_decorators,
    method_options_for,
    parse_bytes,
)
from ropeconv.cli.report import echo_published
from ropeconv.errors import InputError
from ropeconv.extend.dispatch import run
from ropeconv.extend.job import ExtendJob, parse_formats
from ropeconv.formats import GGUF_ALL_OUTTYPES as ALL_OUTTYPES
from ropeconv.formats import ONNX_DTYPES as DTYPES
from ropeconv.formats import is_gguf
from ropeconv.methods.base import ExtendRequest
from ropeconv.parity import Tolerance
from ropeconv.parity.placement import parse_max_memory
from ropeconv.progress import Progress

EPILOG = """\b
Examples:
  # YaRN ×4 on a HF directory, proven against the base in transformers
  ropeconv extend ./SmolLM2-135M --method yarn --factor 4 -o smol-32k/
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
  # retrofit an existing (quantized) GGUF for llama.cpp: metadata rewritten, tensors copied byte for byte
  ropeconv extend model-Q4_K_M.gguf --method yarn --factor 4 -o model-32k.gguf
"""


def _method_options(fn):
    for decorator in reversed(method_option_decorators()):
        fn = decorator(fn)
    return fn


@click.command(epilog=EPILOG)
@click.argument("base", type=PATH)
@click.option("--method", "method_name", required=True, type=click.Choice([m.NAME for m in methods.ordered()]),
              help="context-extension method (see `ropeconv methods`)")
@click.option("--factor", type=float, help="extension factor s = target/original (> 1)")
@click.option("--target-ctx", type=int, help="target context in tokens (instead of --factor)")
@click.option("--original-ctx", type=int, help="override the original context read from the config")
@_method_options
@click.option("--to", "formats", default=None,
              help="output formats, comma-separated: safetensors, gguf, onnx (default: safetensors for a HF base, "
              "gguf for a GGUF base)")
@click.option("--outtype", type=click.Choice(list(ALL_OUTTYPES)), default=None, metavar="TYPE",
              help="GGUF weight type when converting a HF base with --to gguf: f32, f16 (default), bf16, q8_0 "
              "written by ropeconv; q4_k_m, q5_k_m, q6_k, q4_0, q5_0, iq4_nl, iq4_xs, … quantized by llama.cpp's "
              "own quantizer from the float conversion (norms, biases and carriers stay f32)")
@click.option("--imatrix", type=PATH, default=None,
              help="an importance matrix (llama-imatrix's .gguf or legacy .dat) for llama.cpp's quantizer")
@click.option("--dtype", "onnx_dtype", type=click.Choice(list(DTYPES)), default=None,
              help="ONNX weights and compute with --to onnx: fp32 (default); fp16 (float16 weights, activations and "
              "KV cache, for GPUs); int4 (MatMulNBits weights by onnxruntime's quantizer, float32 activations)")
@click.option("--lora", "lora", multiple=True, type=PATH,
              help="a PEFT LoRA adapter directory to merge into the base (repeat for several; merged in fp32, "
              "one tensor at a time)")
@click.option("--lora-trained-with", help="METHOD[:FACTOR] the adapters were trained under, when they do not "
              "record it (ropeconv finetune writes ropeconv_rope.json)")
@click.option("--force-method", is_flag=True, help="merge adapters trained under another rope scaling anyway")
@click.option("-o", "--out", type=PATH, required=True, help="output directory")
@click.option("--force", is_flag=True, help="replace a previous ropeconv output or an empty folder (never files "
              "ropeconv did not write)")
@click.option("--rebase", is_flag=True, help="replace rope scaling the base already carries")
@click.option("--allow-pickle", is_flag=True, help="accept pickle .bin weights (loaded with weights_only=True)")
@click.option("--max-shard-size", default="5GB", show_default=True, help="shard the safetensors above this size")
@click.option("--verify/--no-verify", default=True, show_default=True, help="prove parity before publishing")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--tokens", type=int, help="parity probe length (default on a CPU 1.5× the original context, ≤ 2048)")
@full_length_option
@max_memory_option
@click.option("--max-abs-logit", type=float, default=Tolerance.max_abs_logit, show_default=True,
              help="parity tolerance on max |Δlogit|")
@click.option("--name", help="the output model's name: GGUF general.name and file name (<NAME>-<OUTTYPE>.gguf), the "
              "model card's title (default: the base folder's name)")
@click.option("--base-model", help="the base's Hub id (e.g. HuggingFaceTB/SmolLM2-135M): the card's base_model, which "
              "links the output to its base on the Hub")
@click.option("--card-title", help="the model card's title")
@click.option("--license", "card_license", help="the card's license (Hub identifier, e.g. apache-2.0; default: the "
              "base card's)")
@click.option("--tag", "card_tags", multiple=True, help="a tag for the card's metadata (repeat for several)")
@click.option("--save-recipe", type=PATH,
              help="also write this command line as a YAML recipe (`ropeconv recipe run FILE` repeats it)")
@click.option("--dry-run", is_flag=True, help="check and print the plan, write nothing (but --save-recipe); a GGUF "
              "plan checks the tokenizer's kind but reads no token list, so a vocabulary larger than the embedding "
              "is found by the run itself")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout")
@click.option("-q", "--quiet", is_flag=True, help="no progress on stderr")
def extend(base, method_name, factor, target_ctx, original_ctx, formats, outtype, imatrix, onnx_dtype, lora,
           lora_trained_with, force_method, out, force, rebase, allow_pickle, max_shard_size, verify, device, tokens,
           full_length, max_memory, max_abs_logit, name, base_model, card_title, card_license, card_tags, save_recipe,
           dry_run, as_json, quiet, **method_opts):
    """Extend BASE (a HuggingFace model directory or a GGUF file) with --method and write it to --out."""
    if tokens is not None and tokens < 2:
        raise InputError(f"--tokens must be at least 2, got {tokens}")
    if tokens is not None and full_length:
        raise InputError("--tokens and --full-length: a full-length probe runs to the target context; give one")
    parse_max_memory(max_memory)
    if not (math.isfinite(max_abs_logit) and max_abs_logit > 0):
        raise InputError(f"--max-abs-logit must be a positive number, got {max_abs_logit}")
    chosen = parse_formats(formats, base)
    if outtype is not None and (is_gguf(base) or "gguf" not in chosen):
        raise InputError("--outtype applies when converting a HuggingFace base with --to gguf (a GGUF base keeps "
                         "its tensors as they are)")
    if imatrix is not None and (is_gguf(base) or "gguf" not in chosen):
        raise InputError("--imatrix applies when converting a HuggingFace base with --to gguf --outtype TYPE")
    if onnx_dtype is not None and "onnx" not in chosen:
        raise InputError("--dtype applies to the ONNX output (--to onnx)")
    if (lora_trained_with or force_method) and not lora:
        raise InputError("--lora-trained-with and --force-method apply with --lora")
    request = ExtendRequest(
        factor=factor,
        target_ctx=target_ctx,
        original_ctx=original_ctx,
        options=method_options_for(method_name, method_opts),
    )
    job = ExtendJob(
        base=base,
        method=method_name,
        request=request,
        out=out,
        formats=chosen,
        outtype=outtype or "f16",
        imatrix=imatrix,
        onnx_dtype=onnx_dtype or "fp32",
        force=force,
        rebase=rebase,
        allow_pickle=allow_pickle,
        max_shard_bytes=parse_bytes("--max-shard-size", max_shard_size),
        verify=verify,
        lora=tuple(lora),
        lora_trained_with=lora_trained_with,
        force_method=force_method,
        device=device,
        tokens=tokens,
        tolerance=Tolerance(max_abs_logit=max_abs_logit),
        full_length=full_length,
        max_memory=max_memory,
        # the same fields as a recipe's card section, so both take one path
        card={k: v for k, v in (("title", card_title), ("license", card_license), ("tags", list(card_tags)),
                                ("base_model", base_model)) if v} or None,
        name=name,
    )
    recipe = contextlib.nullcontext()
    if save_recipe is not None:  # checked now, written staged before the work starts, published when it succeeds
        from ropeconv.recipe.save import recipe_text, saving

        recipe = saving(save_recipe, recipe_text(job, save_recipe, max_shard_size))
    with recipe:
        if dry_run:
            return _dry_run(job, as_json)
        result = run(job, Progress(enabled=not quiet))
    # published (and the recipe saved): a stdout that cannot take the report is not "bad input, nothing written"
    if as_json:
        emit_json({
            "out": str(result.out),
            "plan": result.plan.to_json(),
            "files": list(result.files),
            "parity": result.parity.to_json() if result.parity else None,
            "reports": [r.to_json() for r in result.reports],  # one per format: safetensors, gguf, onnx order
        }, published=result.out)
    else:
        p = result.plan
        echo_published(f"wrote {result.out}: {p.method} {p.original_ctx} → {p.target_ctx} tokens"
                       + (", parity passed" if result.parity else ", parity not checked (--no-verify)"), result.out)
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
