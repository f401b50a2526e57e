"""safetensors: the output folder is itself a transformers checkpoint — sharded model*.safetensors (untouched tensors
byte-copied from the base, a resampled position table from memory), its config.json declaring the plan in
rope_parameters (the plan and base recorded in manifest.json beside it), run by transformers reloading the folder.
Writer: export.safetensors_output; inspect view: cli.inspect's checkpoint view."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv.formats.base import EvalSpec, Format, Planning, Ref, Serve


@dataclass(frozen=True)
class SafetensorsPlan:
    planning: Planning
    declaration: dict[str, Any] | None  # transformers' rope_parameters for the plan


def plan(p: Planning) -> SafetensorsPlan:
    # transformers must be able to declare the plan: extend.from_hf.prepare refuses otherwise (is_checkpoint)
    return SafetensorsPlan(p, p.hf_rope)


def record(splan: SafetensorsPlan, _plan) -> dict[str, Any]:
    return {"declaration": splan.declaration}


def home(_splan: SafetensorsPlan, out: Path) -> Path:
    return out  # config.json and the tokenizer beside the shards


WEIGHT_GLOBS = ("*.safetensors", "*.bin")


def eval_artifact(folder: Path) -> Path | None:
    """A folder transformers loads: config.json beside weights."""
    has_weights = any(p for g in WEIGHT_GLOBS for p in folder.glob(g))
    return folder if (folder / "config.json").is_file() and has_weights else None


# the other engines that prove a safetensors folder (`ropeconv verify OUT --runtime …`), by runtime name: their card
# command, (output folder, PositionPlan) -> Serve
OTHER_ENGINES = {"vllm": Ref("ropeconv.parity.vllm_card:serve"), "mlx-lm": Ref("ropeconv.verify_mlx:serve")}


def serve(out: str, rec: Mapping[str, Any], plan, runtime: str) -> Serve | None:
    """transformers loading the folder (its own runtime), or another engine that proved it."""
    if runtime == FORMAT.runtime:
        return Ref("ropeconv.export.safetensors_output:serve")(out, rec, plan)
    other = OTHER_ENGINES.get(runtime)
    return other(out, plan) if other is not None else None


FORMAT = Format(
    "safetensors", None, "transformers", "transformers", is_checkpoint=True,
    proof="transformers reloading this directory",
    plan=plan, writer=Ref("ropeconv.export.safetensors_output:writer"), home=home, record=record,
    runtime_module="ropeconv.parity.runtimes.hf", inspect=Ref("ropeconv.cli.inspect:_inspect_checkpoint"),
    card_declaration=Ref("ropeconv.export.safetensors_output:card_declaration"), serve=serve,
    recorded=Ref("ropeconv.export.safetensors_output:recorded"),
    matrix_note=Ref("ropeconv.export.safetensors_capability:matrix_note"),
    family_refusal=Ref("ropeconv.export.safetensors_capability:family_refusal"),
    eval=EvalSpec("hf", 0, "config.json with safetensors weights", eval_artifact,
                  Ref("ropeconv.eval.runtimes:HFRuntime")),
)
