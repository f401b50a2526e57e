"""The model card (README.md) of an extended model: what was done, and whether it was proven."""

from __future__ import annotations

from typing import Any

from ropeconv.positions import LengthRule, RopePlan

_RULES = {
    LengthRule.STATIC: "static: the same frequencies at every length",
    LengthRule.SWITCH: "switched: short factors up to the original context, long factors beyond",
    LengthRule.DYNAMIC_NTK: "dynamic: the rope base is recomputed from the running length",
}


def model_card(base_name: str, arch: str, plan: RopePlan, rope: dict[str, Any], parity: dict[str, Any] | None) -> str:
    params = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in sorted(plan.params.items()))
    declared = ", ".join(f"`{k}`: {_fmt(v)}" for k, v in rope.items() if k not in ("short_factor", "long_factor"))
    lines = [
        f"# {base_name} — context extended with {plan.method} to {plan.target_ctx} tokens",
        "",
        "Made with [ropeconv](https://pypi.org/project/ropeconv/).",
        "",
        "| | |",
        "|---|---|",
        f"| base | {base_name} ({arch}) |",
        f"| method | {plan.method} |",
        f"| original context | {plan.original_ctx} |",
        f"| target context | {plan.target_ctx} |",
        f"| rope base | {_fmt(plan.theta)} |",
        f"| rotary dims | {plan.rotary_dim} |",
        f"| attention factor | {plan.attention_factor:.10g} |",
        f"| length rule | {_RULES[plan.length_rule]} |",
        "",
        "## Method parameters",
        "",
        "| parameter | value |",
        "|---|---|",
        params,
        "",
        "## How it is declared",
        "",
        f"transformers (`config.json`, both `rope_parameters` and the 4.x `rope_theta` + `rope_scaling`): {declared}.",
        "",
        "## Parity",
        "",
        _parity_text(parity),
        "",
    ]
    return "\n".join(lines)


def _parity_text(parity: dict[str, Any] | None) -> str:
    if not parity:
        return "Not checked when this artifact was written; run `ropeconv verify` on it."
    verdict = "passed" if parity["passed"] else "FAILED"
    return (
        f"{verdict}: transformers reloading this directory against the base weights with the intended rope "
        f"parameters, {parity['tokens']} probe tokens at positions {parity['first_position']}–"
        f"{parity['last_position']} (crossing the original context), on {parity['device']}; tolerance "
        f"max |Δlogit| ≤ {parity['tolerance']['max_abs_logit']:g}, top-1 agreement ≥ "
        f"{parity['tolerance']['min_top1']:g}."
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)
