"""The extend job's options, grouped by what they belong to, and the one function that makes a job of them.

`ropeconv extend` builds its flags from these groups (cli.extend) and the recipe schema its sections from the same
groups (recipe.schema); both then call `build_job`, which makes every check that needs no base: the request, the
formats, which format options apply to which formats (the one place that says so), the probe, the shard size,
the adapters' scaling. Each format declares its own options group on its record (formats.Format.options_group:
GGUF's outtype and imatrix, ONNX's dtype), so a format's options appear in `--to`'s company and in the recipe's
output items without this module naming them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ropeconv import methods
from ropeconv.device.placement import parse_max_memory
from ropeconv.errors import InputError
from ropeconv.extend.job import VERIFY_ENGINES, ExtendJob, parse_formats
from ropeconv.formats import FORMATS, checkpoint_format, is_gguf
from ropeconv.hub.base import HubRef, fetch, hub_ref
from ropeconv.methods.base import ExtendRequest
from ropeconv.optionfields import OptionSpec, build, fields_of, given, option, spec_of
from ropeconv.parity import Tolerance
from ropeconv.sizes import parse_bytes

MAX_ABS_LOGIT_DEFAULT = Tolerance.max_abs_logit


@dataclass(frozen=True)
class BaseOptions:
    """How the base is read (a recipe's `base` section, beside its path)."""

    original_ctx: int | None = option("override the original context read from the config",
                                      flags=("--original-ctx",), click={"type": "int"}, schema="length")
    rebase: bool = option("replace rope scaling the base already carries", False, flags=("--rebase",),
                          click={"is_flag": True})
    allow_pickle: bool = option("accept pickle .bin weights (loaded with weights_only=True)", False,
                                flags=("--allow-pickle",), click={"is_flag": True})


@dataclass(frozen=True)
class LoraOptions:
    """Adapters merged into the base (a recipe lists them under `lora`, each with its own trained_with)."""

    paths: tuple[Path, ...] = option("a PEFT LoRA adapter directory to merge into the base (repeat for several; "
                                     "merged in fp32, one tensor at a time)", (), flags=("--lora",),
                                     click={"type": "path", "multiple": True}, recipe=False)
    trained_with: str | None = option("METHOD[:FACTOR] the adapters were trained under, when they do not record it "
                                      "(ropeconv finetune writes ropeconv_rope.json)", flags=("--lora-trained-with",),
                                      recipe=False)
    force_method: bool = option("merge adapters trained under another rope scaling anyway", False,
                                flags=("--force-method",), click={"is_flag": True})


@dataclass(frozen=True)
class OutputOptions:
    """Where and how the output is written (a recipe's top level: out, outputs, max_shard_size, name)."""

    formats: str | None = option("output formats, comma-separated: {formats} (default: {hf_default} for a HF base, "
                                 "{gguf_default} for a GGUF base)", flags=("--to",), recipe=False)
    out: Path | None = option("output directory (a .gguf file for a GGUF base; in a recipe, relative to it)",
                              flags=("-o", "--out"), click={"type": "path", "required": True}, schema="path")
    force: bool = option("replace a previous ropeconv output or an empty folder (never files ropeconv did not "
                         "write)", False, flags=("--force",), click={"is_flag": True}, recipe=False)
    max_shard_size: str = option("shard the safetensors above this size", "5GB", flags=("--max-shard-size",),
                                 click={"default": "5GB", "show_default": True})
    name: str | None = option("the output model's name: GGUF general.name and file name (<NAME>-<OUTTYPE>.gguf), "
                              "the model card's title (default: the base folder's name)", flags=("--name",))
    push: str | None = option("after the output is published (parity passed), upload it to this Hugging Face Hub "
                              "repo (ORG/NAME; created if missing) in one commit naming the method and the parity "
                              "result (needs HF_TOKEN or `hf auth login`)", flags=("--push-to-hub",),
                              click={"metavar": "REPO"})
    private: bool = option("the repo --push-to-hub creates is private (--public: public; an existing repo keeps "
                           "its visibility)", True, flags=("--private/--public",),
                           click={"default": True, "show_default": True})


@dataclass(frozen=True)
class ParityOptions:
    """The proof before publishing (a recipe's `parity` section)."""

    verify: bool = option("prove parity before publishing", True, flags=("--verify/--no-verify",),
                          click={"default": True, "show_default": True})
    max_abs_logit: float = option("parity tolerance on max |Δlogit|", MAX_ABS_LOGIT_DEFAULT,
                                  flags=("--max-abs-logit",),
                                  click={"type": "float", "default": MAX_ABS_LOGIT_DEFAULT, "show_default": True},
                                  constraints={"gt": 0})
    tokens: int | None = option("parity probe length (default on a CPU 1.5× the original context, ≤ 2048)",
                                flags=("--tokens",), click={"type": "int"}, schema="length", constraints={"ge": 2})
    device: str = option("where the parity check runs", "auto", flags=("--device",),
                         click={"choices": ("auto", "cpu", "cuda"), "default": "auto", "show_default": True},
                         schema=("auto", "cpu", "cuda"))
    full_length: bool | None = option("probe from position 0 to the target context, prefilled in chunks through "
                                      "the KV cache (default on a GPU, up to 32768 tokens)", flags=("--full-length",),
                                      click={"is_flag": True, "default": None}, recipe=False)
    max_memory: str | None = option("caps for the transformers models, e.g. cuda:0=20GiB,cpu=12GiB (cuda:N, cuda, "
                                    "cpu, disk); layers go over every GPU, then the CPU, then disk beside the output "
                                    "(default: what the machine has)", flags=("--max-memory",), recipe=False)
    verify_in: tuple[str, ...] = option("after the own runtimes' parity, also prove the safetensors output in this "
                                        "engine before publishing (repeatable; the names verify's --runtime takes): "
                                        "vllm = vLLM's offline engine (float32, CPU), from .venv-vllm (`make vllm`) "
                                        "or $ROPECONV_VLLM_PYTHON", (), flags=("--verify-in",),
                                        click={"multiple": True, "choices": VERIFY_ENGINES}, schema="list")


@dataclass(frozen=True)
class CardOptions:
    """The model card's metadata (a recipe's `card` section)."""

    title: str | None = option("the model card's title", flags=("--card-title",))
    description: str | None = option("the model card's description")
    license: str | None = option("the card's license (Hub identifier, e.g. apache-2.0; default: the base card's)",
                                 flags=("--license",))
    tags: tuple[str, ...] = option("a tag for the card's metadata (repeat for several)", (), flags=("--tag",),
                                   click={"multiple": True}, schema="list")
    base_model: str | None = option("the base's Hub id (e.g. HuggingFaceTB/SmolLM2-135M): the card's base_model, "
                                    "which links the output to its base on the Hub", flags=("--base-model",))


GROUPS: dict[str, type] = {"base": BaseOptions, "lora": LoraOptions, "output": OutputOptions,
                           "parity": ParityOptions, "card": CardOptions}

# a message's name for an option: the flag on the command line, the YAML path in a recipe
Namer = Callable[[str, str, OptionSpec], str]


def flag_name(_group: str, _field: str, spec: OptionSpec) -> str:
    return spec.flag


def format_groups() -> dict[str, type]:
    """Each registered format's own options group (read when asked: a format registered later counts)."""
    return {name: fmt.options_group for name, fmt in FORMATS.items() if fmt.options_group is not None}


def build_job(base: Path | HubRef, method: str, *, factor: float | None = None, target_ctx: int | None = None,
              method_options: Mapping[str, Any] | None = None, values: Mapping[str, Mapping[str, Any]],
              format_values: Mapping[str, Mapping[str, Any]], recipe: dict[str, Any] | None = None,
              name: Namer = flag_name, fetch_hub: bool = True) -> ExtendJob:
    """(base, method, the groups' values) → the job, with every check that needs no base; then a base given as a
    Hub id (hub.base's rule: a path that exists is local, else ORG/NAME[@REVISION][:FILE.gguf] is the Hub's) is
    fetched into huggingface_hub's cache, and the job reads the snapshot. fetch_hub=False (`recipe check`): the
    Hub id is checked for form only and the job's base is a stand-in path.

    values: group name (GROUPS) → {field: value given}; format_values: format name → {its option: value given}
    (None and () are "not given", so the groups' own defaults apply); name: how a message names an option."""
    if isinstance(base, HubRef):
        ref: HubRef | None = base
        base = base.stand_in  # what the checks below see (a GGUF or not) until it is fetched
    else:
        ref = hub_ref(base)
        base = ref.stand_in if ref is not None else Path(base)
    groups = {key: build(cls, values.get(key, {})) for key, cls in GROUPS.items()}
    base_opts: BaseOptions = groups["base"]
    lora: LoraOptions = groups["lora"]
    output: OutputOptions = groups["output"]
    parity: ParityOptions = groups["parity"]

    def called(group: str, field: str) -> str:
        return name(group, field, spec_of(GROUPS[group], field))

    if parity.tokens is not None and parity.tokens < 2:
        raise InputError(f"{called('parity', 'tokens')} must be at least 2, got {parity.tokens}")
    if parity.tokens is not None and parity.full_length:
        raise InputError("--tokens and --full-length: a full-length probe runs to the target context; give one")
    parse_max_memory(parity.max_memory)
    if not (math.isfinite(parity.max_abs_logit) and parity.max_abs_logit > 0):
        raise InputError(f"{called('parity', 'max_abs_logit')} must be a positive number, got {parity.max_abs_logit}")
    chosen = parse_formats(output.formats, base)
    format_options = _format_options(base, chosen, format_values, name)
    _check_verify_in(parity, chosen, called("parity", "verify_in"), called("parity", "verify"))
    if (lora.trained_with or lora.force_method) and not lora.paths:
        raise InputError("--lora-trained-with and --force-method apply with --lora")
    request = ExtendRequest(factor=factor, target_ctx=target_ctx, original_ctx=base_opts.original_ctx,
                            options=dict(method_options or {}))
    methods.check_request(methods.get(method), request)
    if output.out is None:
        raise InputError("no output given (-o)")
    if output.push is not None:
        from ropeconv.hub.push import check_repo_id

        check_repo_id(output.push, called("output", "push"))
    elif not output.private:
        public = called("output", "private")
        public = "--public" if public.startswith("--") else f"{public}: false"
        raise InputError(f"{public} applies with {called('output', 'push')}")
    card_fields = given(CardOptions, values.get("card", {}))
    if "tags" in card_fields:
        card_fields["tags"] = list(card_fields["tags"])
    hub = None
    if ref is not None and fetch_hub:  # last: every check that needs no base refuses before a download
        base, hub = fetch(ref, allow_pickle=base_opts.allow_pickle)
    return ExtendJob(
        base=base,
        hub=hub,
        method=method,
        request=request,
        out=output.out,
        formats=chosen,
        format_options=MappingProxyType(format_options),
        force=output.force,
        rebase=base_opts.rebase,
        allow_pickle=base_opts.allow_pickle,
        max_shard_bytes=parse_bytes(called("output", "max_shard_size"), output.max_shard_size),
        verify=parity.verify,
        lora=tuple(lora.paths),
        lora_trained_with=lora.trained_with,
        force_method=lora.force_method,
        recipe=recipe,
        # the card's fields as given (a recipe's card section, the CLI's card flags): the card reads what is set
        card={k: card_fields[k] for k in ("title", "description", "license", "tags", "base_model")
              if k in card_fields} or None,
        name=output.name,
        push=output.push,
        private=output.private,
        device=parity.device,
        tokens=parity.tokens,
        tolerance=Tolerance(max_abs_logit=parity.max_abs_logit),
        full_length=parity.full_length,
        max_memory=parity.max_memory,
        verify_in=tuple(dict.fromkeys(parity.verify_in)),
    )


def _check_verify_in(parity: ParityOptions, chosen: tuple[str, ...], flag: str, verify_flag: str) -> None:
    """--verify-in ENGINE: a known engine, with the proof on, and the output the engine loads among the formats."""
    unknown = [e for e in parity.verify_in if e not in VERIFY_ENGINES]
    if unknown:
        raise InputError(f"{flag} {unknown[0]!r}: the engines an output is proven in before publishing are "
                         f"{', '.join(VERIFY_ENGINES)}")
    if not parity.verify_in:
        return
    if not parity.verify:
        shown = "--no-verify" if verify_flag.startswith("--") else f"{verify_flag}: false"
        raise InputError(f"{flag} {parity.verify_in[0]} proves the output before publishing; {shown} turns the "
                         "proof off: give one")
    checkpoint = checkpoint_format().name
    if checkpoint not in chosen:
        raise InputError(f"{flag} {parity.verify_in[0]}: the engine loads the {checkpoint} output, which is not "
                         f"among the outputs ({', '.join(chosen)}); add it to the outputs")


def _format_options(base: Path, chosen: tuple[str, ...], format_values: Mapping[str, Mapping[str, Any]],
                    name: Namer) -> dict[str, Any]:
    """The one place that says which format options apply: a format's options only with that format among the
    outputs, and a converting-only option (GGUF's outtype, imatrix) only when the base is converted."""
    groups = format_groups()
    for fmt, values in format_values.items():
        group = groups.get(fmt)
        if group is None:
            raise InputError(f"{fmt} output has no options")
        for f, spec in fields_of(group):
            if values.get(f.name) is None:
                continue
            if fmt not in chosen:
                raise InputError(f"{name(fmt, f.name, spec)} applies to the {fmt} output (--to {fmt})")
            if spec.converts_only and is_gguf(base):
                raise InputError(f"{name(fmt, f.name, spec)} applies when converting a HuggingFace base with --to "
                                 f"{fmt} (a GGUF base keeps its tensors as they are)")
    return {fmt: build(group, format_values.get(fmt, {})) for fmt, group in groups.items() if fmt in chosen}


def output_item(job: ExtendJob, fmt: str) -> dict[str, Any]:
    """A recipe's output item for one of the job's formats: the format's options as the job sets them (defaults
    included, paths absolute), less those that apply only to a conversion when the base is not converted."""
    item: dict[str, Any] = {"format": fmt}
    group = FORMATS[fmt].options_group
    if group is None:
        return item
    chosen = job.options_for(fmt)
    for f, spec in fields_of(group):
        value = getattr(chosen, f.name)
        if value is None or (spec.converts_only and is_gguf(job.base)):
            continue
        item[f.name] = str(Path(value).resolve()) if isinstance(value, Path) else value
    return item
