"""The model card (README.md) of an extended model: what was done, and whether it was proven."""

from __future__ import annotations

from typing import Any

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
               fields: dict[str, Any] | None = None) -> str:
    """fields: a recipe's card section (title, description, license, tags)."""
    fields = fields or {}
    """formats: the manifest's record per format written; parity: the report summary per format."""
    params = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in sorted(plan.params.items()))
    declared = []
    rope = formats.get("safetensors", {}).get("declaration")
    gguf, onnx = formats.get("gguf"), formats.get("onnx")
    if rope is not None and plan.kind == "alibi":
        keys = ", ".join(f"`{k}`: {_fmt(v)}" for k, v in rope.items())
        declared.append(f"transformers (`config.json`): `ropeconv_alibi_scaling` = {{{keys}}}, applied by "
                        "`ropeconv.runtime.apply(model)`." if rope and plan.factor != 1.0 else
                        "transformers (`config.json`): the base's own ALiBi, unchanged.")
    elif rope is not None and plan.kind == "absolute":
        declared.append(f"transformers (`config.json`): the resampled table `{plan.table}` and a context of "
                        f"{plan.target_ctx} positions.")
    elif rope is not None:
        keys = ", ".join(f"`{k}`: {_fmt(v)}" for k, v in rope.items() if k not in ("short_factor", "long_factor"))
        declared.append(f"transformers (`config.json`, both `rope_parameters` and the 4.x `rope_theta` + "
                        f"`rope_scaling`): {keys}.")
    if gguf is not None:
        keys = ", ".join(f"`{k}`: {_fmt(v)}" for k, v in gguf["declaration"].items())
        carriers = f"; carrier tensors {', '.join(gguf['carriers'])}" if gguf["carriers"] else ""
        declared.append(f"llama.cpp (`{gguf['file']}`, {gguf['outtype']}): {keys}{carriers}.")
    if onnx is not None:
        attention = f", attention by {onnx['attention']}" if onnx.get("attention") else ""
        declared.append(f"onnxruntime (`{onnx['file']}`, --dtype {onnx['dtype']}, opset {onnx['opset']}{attention}): the "
                        f"position math is baked into the graph — {onnx['position_math']}.")
    written = [f for f in ("safetensors", "gguf", "onnx") if f in formats]
    lines = [
        *_front_matter(fields),
        f"# {fields.get('title') or f'{base_name} — context extended with {plan.method} to {plan.target_ctx} tokens'}",
        "",
        *([fields["description"], ""] if fields.get("description") else []),
        "Made with [ropeconv](https://pypi.org/project/ropeconv/).",
        "",
        "| | |",
        "|---|---|",
        f"| base | {base_name} ({arch}) |",
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
        "## Parity",
        "",
        "\n\n".join(_parity_text(f, (parity or {}).get(f)) for f in written),
        "",
    ]
    return "\n".join(lines)


def _front_matter(fields: dict[str, Any]) -> list[str]:
    """The Hugging Face model-card metadata block, when the recipe gives license or tags."""
    meta = {k: fields[k] for k in ("license", "tags") if fields.get(k)}
    if not meta:
        return []
    import yaml

    return ["---", yaml.safe_dump(meta, sort_keys=True).rstrip("\n"), "---", ""]


def _lora_section(lora: list[dict[str, Any]] | None) -> list[str]:
    if not lora:
        return []
    rows = [f"| `{a['path']}` | {a['r']} | {a['lora_alpha']} | {'yes' if a['use_rslora'] else 'no'} | {a['modules']} | "
            f"`{a['sha256'][:12]}…` |" for a in lora]
    return ["## LoRA merged", "", "W' = W + Σ s·B·A in float32, cast back to each weight's dtype; merged before the "
            "method was applied.", "", "| adapter | r | alpha | rsLoRA | modules | sha256 |", "|---|---|---|---|---|---|",
            *rows, ""]


RUNS = {"safetensors": "transformers reloading this directory", "gguf": "llama.cpp running the GGUF",
        "onnx": "onnxruntime running the ONNX decoder (prefill, then decode steps through its KV cache)"}


def _parity_text(fmt: str, parity: dict[str, Any] | None) -> str:
    if not parity:
        return f"{fmt}: not checked when this artifact was written; run `ropeconv verify` on it."
    verdict = "passed" if parity["passed"] else "FAILED"
    return (
        f"{fmt}: {verdict}: {RUNS[fmt]} against the base weights with the intended position "
        f"math, {parity['tokens']} probe tokens at positions {parity['first_position']}–"
        f"{parity['last_position']} (crossing the original context), on {parity['device']}; tolerance "
        f"max |Δlogit| ≤ {parity['tolerance']['max_abs_logit']:g}, top-1 agreement ≥ "
        f"{parity['tolerance']['min_top1']:g}."
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)
