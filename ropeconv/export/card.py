"""The model card (README.md) of an extended model: what was done, and whether it was proven; its metadata block
(base_model, library_name, pipeline_tag, license, tags) through huggingface_hub's ModelCard, as the Hub reads it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ropeconv.errors import InputError
from ropeconv.formats import FORMATS
from ropeconv.hub.base import cache_snapshot
from ropeconv.jsontext import printable
from ropeconv.positions import LengthRule, PositionPlan

_RULES = {
    LengthRule.STATIC: "static: the same frequencies at every length",
    LengthRule.SWITCH: "switched: short factors up to the original context, long factors beyond",
    LengthRule.DYNAMIC_NTK: "dynamic: the rope base is recomputed from the running length",
    LengthRule.PROPORTIONAL: "proportional: slopes unchanged up to the original context, divided by "
                             "(keys in view / original context) beyond it",
}


def _position_rows(plan) -> list[str]:
    """The table rows that describe the plan's own position math."""
    rule = f"| length rule | {_RULES[plan.length_rule]} |"
    if plan.kind == "alibi":
        return [f"| position scheme | ALiBi, {len(plan.slopes)} heads |",
                f"| slope divisor | {_fmt(plan.factor)} |" if plan.length_rule is LengthRule.STATIC else rule]
    if plan.kind == "absolute":
        return [f"| position scheme | learned absolute table `{plan.table}` |",
                f"| table rows | {plan.original_ctx} → {plan.target_ctx} (linear interpolation, endpoints kept)"
                + (f", {plan.offset} leading rows kept" if plan.offset else "") + " |"]
    return [f"| rope base | {_fmt(plan.theta)} |", f"| rotary dims | {plan.rotary_dim} |",
            f"| attention factor | {plan.attention_factor:.10g} |", rule]


def _alibi_runtime_note(plan) -> list[str]:
    if plan.kind != "alibi" or plan.factor == 1.0:
        return []
    return ["", "**Vanilla transformers ignores `ropeconv_alibi_scaling` and computes the base's unscaled ALiBi.** "
            "Load with `model = AutoModelForCausalLM.from_pretrained(path)` then `ropeconv.runtime.apply(model)`; "
            "the ONNX export (when written) carries the scaling itself."]


def model_card(base_name: str, arch: str, plan: PositionPlan, formats: dict[str, dict[str, Any]],
               parity: dict[str, dict[str, Any]] | None, lora: list[dict[str, Any]] | None = None,
               fields: dict[str, Any] | None = None, base_card: dict[str, Any] | None = None,
               name: str | None = None, base_ref: str | None = None) -> str:
    """formats: the manifest's record per format written; parity: the report summary per format; fields: the card
    options (title, description, license, tags, base_model: `extend --card-title …` or a recipe's card section);
    base_card: the base's own card metadata (base_card_metadata); name: the output model's name (--name);
    base_ref: the base's row when it is a Hub snapshot (base_names: its id at its commit), else base_name."""
    fields = fields or {}
    params = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in sorted(plan.params.items()))
    declared = []
    for fmt in FORMATS.values():  # each format says how its file declares the plan
        line = fmt.card_declaration(formats[fmt.name], plan) if fmt.name in formats else None
        if line:
            declared.append(line)
    written = [f for f in FORMATS if f in formats]
    title = (fields.get("title") or name
             or f"{base_name} — context extended with {plan.method} to {plan.target_ctx} tokens")
    lines = [
        f"# {title}",
        "",
        *([fields["description"], ""] if fields.get("description") else []),
        "Made with [ropeconv](https://pypi.org/project/ropeconv/).",
        "",
        "| | |",
        "|---|---|",
        f"| base | {base_ref or base_name} ({arch}) |",
        f"| method | {plan.method} |",
        f"| original context | {plan.original_ctx} |",
        f"| target context | {plan.target_ctx} |",
        *_position_rows(plan),
        "",
        "## Method parameters",
        "",
        "| parameter | value |",
        "|---|---|",
        params,
        "",
        *_lora_section(lora),
        "## How it is declared",
        "",
        "\n\n".join(declared),
        *_alibi_runtime_note(plan),
        "",
        *long_context_section(plan, formats, parity),
        "## Parity",
        "",
        "\n\n".join(_parity_text(f, (parity or {}).get(f)) for f in written),
        "",
    ]
    from huggingface_hub import ModelCard

    # a base or adapter folder whose name is not UTF-8 reaches here as surrogate escapes: shown as \xNN

    data = card_data(plan, formats, fields, base_card or {}, name, lora=bool(lora))
    return str(ModelCard.from_template(data, template_str=_TEMPLATE, body=printable("\n".join(lines))))


_TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}"
# what carries over from the base's card (not its base_model: that names the base's own parent)
_FROM_BASE = ("license", "license_name", "license_link", "language")


def card_data(plan: PositionPlan, formats: dict[str, Any], fields: dict[str, Any], base_card: dict[str, Any],
              name: str | None, lora: bool = False):
    """The metadata block: huggingface_hub's ModelCardData."""
    from huggingface_hub import ModelCardData

    # the Hub's library (what it shows and filters by): the first format written, in the registry's order, names it
    written = [f for f in FORMATS if f in formats]
    meta: dict[str, Any] = {k: base_card[k] for k in _FROM_BASE if base_card.get(k)}
    if fields.get("license"):  # the user's license replaces the base's, with its name and link
        meta = {k: v for k, v in meta.items() if not k.startswith("license")}
        meta["license"] = fields["license"]
    tags = ["ropeconv", "long-context", plan.method, *written, *(fields.get("tags") or [])]
    base_model = fields.get("base_model")
    if base_model:
        meta["base_model"] = base_model
        relation = base_model_relation(plan, formats, lora)
        if relation:
            meta["base_model_relation"] = relation
    return ModelCardData(library_name=FORMATS[written[0]].library, pipeline_tag="text-generation",
                         tags=list(dict.fromkeys(tags)), model_name=name, **meta)


def base_model_relation(plan: PositionPlan, formats: dict[str, Any], lora: bool) -> str | None:
    """The Hub knows adapter, merge, quantized and finetune. A merged LoRA or a changed position rule makes another
    model of the base (finetune); a Q8_0 GGUF without safetensors beside it is quantized; a plain conversion
    (--method none) in full precision is neither, so it is left for the Hub to infer."""
    written = [(FORMATS[name], record) for name, record in formats.items() if name in FORMATS]
    quantized = any(fmt.hub_quantized(record) for fmt, record in written) \
        and not any(fmt.is_checkpoint for fmt, _ in written)
    if lora or plan.method != "none":
        return "quantized" if quantized and not lora else "finetune"
    return "quantized" if quantized else None


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def check_name(name: str | None) -> None:
    """--name becomes a file name (the GGUF's) as well as a title: letters, digits and . _ + - only."""
    if name is not None and (not _NAME.fullmatch(name) or len(name) > 200):
        raise InputError(f"--name {name!r}: use letters, digits and . _ + - (it names the GGUF file too), "
                         "starting with a letter or digit")


def check_card_fields(fields: dict[str, Any]) -> None:
    """The card options, before anything is written: a Hub id for base_model, one-line license and tags."""
    base_model = fields.get("base_model")
    if base_model is not None:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(base_model)
        except HFValidationError:
            raise InputError(f"--base-model {base_model!r}: expected a Hub model id such as "
                             "HuggingFaceTB/SmolLM2-135M") from None
    for key in ("title", "license"):
        value = fields.get(key)
        if value is not None and (not str(value).strip() or "\n" in str(value)):
            raise InputError(f"card {key} must be one non-empty line, got {value!r}")
    for tag in fields.get("tags") or []:
        if not str(tag).strip() or "\n" in str(tag):
            raise InputError(f"card tag {tag!r}: a tag is one non-empty line")


def hub_id_from_path(base: Path) -> str | None:
    """The Hub id of a base that is a snapshot in huggingface_hub's cache (what `hf download ID` without --local-dir
    leaves, and what `ropeconv extend ID` reads: …/models--ORG--NAME/snapshots/COMMIT), else None."""
    snapshot = cache_snapshot(base)
    return snapshot.repo_id if snapshot is not None and not snapshot.inside else None


def base_names(base: Path) -> tuple[str, str | None]:
    """The base's name (the card's default title) and its card row when it is a Hub snapshot: a folder's name, or
    for a snapshot the repo's name, and its id at the commit the snapshot holds (the base_model relation's
    revision)."""
    snapshot = cache_snapshot(base)
    if snapshot is None or snapshot.inside:
        return Path(base).name, None
    return snapshot.name, f"[{snapshot.repo_id}](https://huggingface.co/{snapshot.repo_id}) at commit {snapshot.commit}"


def base_card_metadata(base: Path) -> dict[str, Any]:
    """The metadata block of the base's own README.md (a Hub card), or {} when it has none."""
    readme = Path(base) / "README.md"
    if not readme.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict()
    except Exception:  # a malformed card does not stop a conversion; its metadata is simply not carried over
        return {}


def _lora_section(lora: list[dict[str, Any]] | None) -> list[str]:
    if not lora:
        return []
    rows = [f"| `{a['path']}` | {a['r']} | {a['lora_alpha']} | {'yes' if a['use_rslora'] else 'no'} | {a['modules']} | "
            f"`{a['sha256'][:12]}…` |" for a in lora]
    return ["## LoRA merged", "", "W' = W + Σ s·B·A in float32, cast back to each weight's dtype; merged before the "
            "method was applied.", "", "| adapter | r | alpha | rsLoRA | modules | sha256 |", "|---|---|---|---|---|---|",
            *rows, ""]


OUT = "OUT"  # how the card's commands name the output folder (this folder, or the repository it was pushed to)


def _proofs(formats: dict[str, Any], parity: dict[str, Any] | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(format, runtime, parity record) of every proof the manifest records for the formats written, in the
    registry's order, then the other engines that proved the checkpoint folder (`extend --verify-in vllm`: a parity
    key that names no format, the engine's own), by name."""
    parity = parity or {}
    found = [(name, fmt.runtime, parity[name]) for name, fmt in FORMATS.items() if name in formats and parity.get(name)]
    checkpoint = next((name for name, fmt in FORMATS.items() if fmt.is_checkpoint and name in formats), None)
    if checkpoint is not None:
        found += [(checkpoint, str(parity[key].get("runtime") or key), parity[key])
                  for key in sorted(parity) if key not in FORMATS and isinstance(parity[key], dict)]
    return found


def _short_text_caveat(plan) -> str:
    """What the plan does to texts shorter than the original context, per length rule."""
    orig = plan.original_ctx
    if plan.kind == "absolute":
        return (f"**Short texts:** the position table is resampled as a whole (every row interpolated, endpoints kept), "
                f"so positions below {orig} change too and short-text quality may differ slightly from the base's.")
    if plan.length_rule is LengthRule.PROPORTIONAL:
        return (f"**Short texts:** unaffected: the slopes are the base's own while at most {orig} keys are in view, "
                "and divided only beyond it.")
    if plan.length_rule is LengthRule.DYNAMIC_NTK:
        return (f"**Short texts:** unaffected: dynamic scaling recomputes the rope base from the running length only "
                f"once it exceeds {orig} tokens; below that the model computes exactly as the base.")
    if plan.length_rule is LengthRule.SWITCH:
        short = ("the base's own frequencies" if all(d == 1.0 for d in plan.divisors)
                 else "the short factors")
        attention = ("" if plan.attention_factor == 1.0 else
                     f" The attention factor {plan.attention_factor:.6g} applies at every length, short texts "
                     "included.")
        return (f"**Short texts:** a sequence of at most {orig} tokens runs with {short}, the long factors apply "
                "only beyond it (transformers switches per forward pass by the sequence's length; llama.cpp once per "
                f"context, so a llama.cpp context above {orig} uses the long factors for every sequence).{attention}")
    if plan.kind == "alibi":
        return (f"**Short texts:** static scaling: every slope is divided by {_fmt(plan.factor)} at every length, "
                "short texts included, which may affect short-text quality.")
    return ("**Short texts:** static scaling: the scaled frequencies"
            + ("" if plan.attention_factor == 1.0 else f" and the attention factor {plan.attention_factor:.6g}")
            + f" apply at every length, texts shorter than {orig} tokens included, which may affect short-text "
              f"quality (the scaling is constant whatever the input's length). Where texts stay within {orig} tokens, "
              f"the base model is the better choice; `--method dynamic` would leave texts up to {orig} tokens exactly "
              "as the base computes them.")


def _figure(rec: dict[str, Any]) -> str:
    """The parity figure a record carries: |Δlogit| (own runtimes) or |Δ log-probability| (vLLM), with positions."""
    if rec.get("max_abs_logprob") is not None:
        figure = f"max |Δ log-probability| {rec['max_abs_logprob']:.2g}"
    elif rec.get("max_abs_logit") is not None:
        figure = f"max |Δlogit| {rec['max_abs_logit']:.2g}"
    else:
        figure = "within tolerance"
    top1 = f", top-1 agreement {rec['top1']:.1%}" if rec.get("top1") is not None else ""
    ran = f" in {' and '.join(rec['ran'])}" if rec.get("ran") else ""
    if rec.get("quantized_mean_kl") is not None:  # the strict figures are the float32 twin's
        figure = (f"the file itself: mean KL {rec['quantized_mean_kl']:.2g}, top-1 agreement "
                  f"{rec['quantized_top1']:.1%}; its float32 twin: {figure}")
    return (f"{figure}{top1} over positions {rec.get('first_position')}–{rec.get('last_position')} "
            f"({rec.get('tokens')} probe tokens){ran}")


def long_context_section(plan, formats: dict[str, Any], parity: dict[str, Any] | None) -> list[str]:
    """The card's "Long context" section, in the form Qwen's cards give "Processing Long Texts": what was applied,
    that it is baked in, each proven engine's command (from its format's serve hook) with its parity figure, and what
    the plan does to short texts."""
    if plan.target_ctx == plan.original_ctx and plan.method == "none":
        return []
    factor = f" ×{_fmt(plan.params.get('factor', plan.factor))}" if plan.params.get("factor", plan.factor) else ""
    lines = ["## Long context", "",
             f"The context was extended from {plan.original_ctx} to **{plan.target_ctx} tokens** with "
             f"`{plan.method}`{factor} ({_RULES[plan.length_rule].split(':')[0]}). The scaling is baked in: every file "
             "declares it in its own metadata (see *How it is declared*), so no runtime flag is needed and nothing "
             "is to be added to `config.json` (unlike cards that ask to add `rope_scaling` to it, or to pass "
             "`--rope-scaling` flags to the engine). Give the engine "
             f"a context of up to {plan.target_ctx} tokens.", "",
             _short_text_caveat(plan), ""]
    commands = []
    for name, runtime, rec in _proofs(formats, parity):
        if not rec.get("passed"):
            continue
        serve = FORMATS[name].serve(OUT, formats[name], plan, runtime)
        if serve is None:
            continue
        commands += [f"**{serve.engine}** ({name}; proven: {_figure(rec)})", "",
                     f"```{serve.language}", serve.command, "```", ""]
        if serve.note:
            commands += [serve.note, ""]
    if commands:
        lines += [f"Proven commands (`{OUT}` is this folder, or the repository once downloaded): each engine below ran "
                  "this output against the reference and passed (see *Parity*).", "", *commands]
    else:
        lines += ["No engine's parity check passed for this output when it was written, so no command is given; run "
                  "`ropeconv verify` on it.", ""]
    return lines


def _parity_text(fmt: str, parity: dict[str, Any] | None) -> str:
    if not parity:
        return f"{fmt}: not checked when this artifact was written; run `ropeconv verify` on it."
    verdict = "passed" if parity["passed"] else "FAILED"
    ran = f" ({' and '.join(parity['ran'])})" if parity.get("ran") else ""
    return (
        f"{fmt}: {verdict}: {FORMATS[fmt].proof}{ran} against the base weights with the intended position "
        f"math, {parity['tokens']} probe tokens at positions {parity['first_position']}–"
        f"{parity['last_position']} (crossing the original context), on {parity['device']}; tolerance "
        f"max |Δlogit| ≤ {parity['tolerance']['max_abs_logit']:g}, top-1 agreement ≥ "
        f"{parity['tolerance']['min_top1']:g}."
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)
