"""The openvino format's planning, writer (formats.Writer), manifest record, twin policy, provenance reader, inspect
view and model-card line.

The writer stages a transformers folder (the safetensors writer's shards, the extended config.json declaring the
plan in rope_parameters and rope_scaling, the tokenizer) in <out>/.openvino-staging, and close() hands it to
optimum-intel's own exporter in the OpenVINO environment (env.run_jobs → ov_runner.py: main_export, weights
compressed by NNCF for int8/int4) writing <out>/openvino/; the staging folder is then removed. Nothing of optimum or
openvino is imported in this environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv import jsontext
from ropeconv.errors import InputError, UnsupportedError
from ropeconv.export import engine_folder
from ropeconv.export.engine_folder import EngineFolder, EngineFolderWriter
from ropeconv.export.hf_config import extended_config
from ropeconv.formats.base import Note, Planning, Serve, Twin
from ropeconv.formats.openvino import DIR, MARKER
from ropeconv.openvino_export import env
from ropeconv.openvino_export.capability import family_reason
from ropeconv.provenance import provenance

FOLDER = EngineFolder("OpenVINO", DIR, ".openvino-staging", MARKER)
DEFAULT_GROUP = 128


@dataclass(frozen=True)
class OvPlan:
    planning: Planning
    config: dict[str, Any]  # the staged transformers config.json (the plan declared for transformers to trace)
    declaration: dict[str, Any] | None  # the rope parameters the exporter traced
    weights: str
    group_size: int
    props: dict[str, str]  # provenance: plan, base, ropeconv version


def plan(p: Planning) -> OvPlan:
    ckpt, position_plan = p.checkpoint, p.plan
    model_type = ckpt.arch.model_type
    reason = family_reason(model_type, position_plan.method)
    if reason is None and position_plan.kind != "rope":
        reason = f"OpenVINO runs rope models only here ({position_plan.kind} positions)"
    if reason is None and p.hf_rope is None:
        reason = "transformers cannot declare this plan in config.json, which is what optimum-intel's exporter traces"
    if reason is not None or p.hf_rope is None:
        raise UnsupportedError(f"--to openvino: {model_type} with {position_plan.method}: {reason}")
    config = extended_config(ckpt.config, ckpt.arch, ckpt.scheme, position_plan, p.hf_rope)
    options = p.job.options_for("openvino")
    if options.ov_weights != "int4" and options.ov_group_size != DEFAULT_GROUP:
        raise InputError("--ov-group-size applies with --ov-weights int4")
    if not p.dry_run:
        env.require()
    return OvPlan(p, config, p.hf_rope, options.ov_weights, options.ov_group_size,
                  provenance(position_plan, ckpt.path))


def _converted(oplan: OvPlan, note: Note):
    """The writer's converter: optimum-intel's exporter in the OpenVINO environment on the staged folder."""

    def convert(staging: Path, home: Path) -> dict[str, Any]:
        group = f", groups of {oplan.group_size}" if oplan.weights == "int4" else ""
        note(f"openvino: exporting with optimum-intel's exporter ({oplan.weights}{group})")
        _, versions = env.run_jobs([export_job(staging, home, oplan.weights, oplan.group_size)], note)
        if not (home / "openvino_model.xml").is_file():
            raise UnsupportedError(f"optimum-intel's exporter wrote no openvino_model.xml in {home}")
        return marker(oplan, versions)

    return convert


def export_job(src: Path, dst: Path, weights: str = "fp32", group_size: int = DEFAULT_GROUP) -> dict[str, Any]:
    """One export job for ov_runner.py: the transformers folder src into the OpenVINO folder dst."""
    return {"op": "export", "src": str(Path(src).resolve()), "dst": str(Path(dst).resolve()), "weights": weights,
            "group_size": group_size}


def writer(oplan: OvPlan, out: Path, note: Note) -> EngineFolderWriter:
    return EngineFolderWriter(FOLDER, oplan.planning, oplan.config, out, _converted(oplan, note))


def marker(oplan: OvPlan, versions: dict[str, str]) -> dict[str, Any]:
    return {"format": "openvino", **oplan.props, "weights": oplan.weights,
            "group_size": oplan.group_size if oplan.weights == "int4" else None,
            "openvino": versions.get("openvino"), "optimum_intel": versions.get("optimum-intel"),
            "nncf": versions.get("nncf"), "transformers": versions.get("transformers"),
            "rope_parameters": oplan.declaration}


def record(oplan: OvPlan, _plan) -> dict[str, Any]:
    rec: dict[str, Any] = {"file": f"{DIR}/{MARKER}", "folder": DIR, "weights": oplan.weights,
                           "declaration": oplan.declaration}
    if oplan.weights == "int4":
        rec["group_size"] = oplan.group_size
    return rec


def read_marker(folder: Path) -> dict[str, Any]:
    return engine_folder.read_marker(FOLDER, folder)


def recorded(folder: Path):
    """(plan, base) as ropeconv-openvino.json records them."""
    return engine_folder.recorded(FOLDER, folder)


def twin(base: Path, position_plan, lora=None) -> Twin | None:
    """The float32 OpenVINO folder optimum-intel exports from the base's own weights with the plan's config.json:
    what an fp16, int8 or int4 folder is judged through strictly. None where it cannot be made so (LoRA merged,
    pickle weights)."""
    return engine_folder.twin_writer(base, position_plan, lora,
                                     lambda src, dst: env.run_jobs([export_job(src, dst, "fp32")]))


def quantized_twin(artifact: Path, given: Twin | None) -> Twin | None:
    """An fp16/int8/int4 folder is judged strictly through the float32 twin exported from the base, and runs as
    itself against the quantized limits; an fp32 folder is judged as it is."""
    found = read_marker(artifact)
    if found.get("weights", "fp32") == "fp32":
        return None
    if given is None:
        raise UnsupportedError(f"{artifact}: a {found.get('weights')} OpenVINO folder is judged through a float32 "
                               "twin exported from the base's safetensors, which this run cannot make (LoRA merged, "
                               "or no safetensors); write --ov-weights fp32")
    return given


def twin_note(artifact: Path, given: Twin | None) -> str:
    found = read_marker(artifact)
    return (f"OpenVINO ran a float32 twin of {Path(artifact).name}/ (exported by optimum-intel from the base) for the "
            f"strict check, and the folder itself ({found.get('weights')}) for the q- rows")


def card_declaration(rec: dict[str, Any], _plan) -> str:
    from ropeconv.export.card import _fmt

    declared = rec.get("declaration")
    keys = ", ".join(f"`{k}`: {_fmt(v)}" for k, v in declared.items()) if declared else "none (the base's own rope)"
    group = f", groups of {rec.get('group_size')}" if rec.get("weights") == "int4" else ""
    return (f"OpenVINO IR (`{rec.get('folder', DIR)}/openvino_model.xml`, {rec.get('weights')}{group}, exported by "
            f"optimum-intel from a config.json with `rope_parameters` = {keys}): the rope traced into the graph.")


def serve(out: str, rec: Mapping[str, Any], plan, runtime: str) -> Serve | None:
    """optimum-intel's OVModelForCausalLM on the folder: the rope is in the IR, nothing to pass."""
    from ropeconv.formats.openvino import FORMAT

    if runtime != FORMAT.runtime:
        return None
    folder = f"{out}/{rec.get('folder', DIR)}"
    command = (f'from optimum.intel import OVModelForCausalLM\nfrom transformers import AutoTokenizer\n\n'
               f'model = OVModelForCausalLM.from_pretrained("{folder}")\n'
               f'tokenizer = AutoTokenizer.from_pretrained("{folder}")\n'
               f'inputs = tokenizer(open("long.txt").read(), return_tensors="pt")\n'
               f'print(tokenizer.decode(model.generate(**inputs, max_new_tokens=256)[0]))')
    return Serve("OpenVINO", command, "python",
                 f"The rope is traced into `{folder}/openvino_model.xml`: no flag is needed (prompts of up to "
                 f"{plan.target_ctx} tokens). Parity ran with `ov_config={{\"INFERENCE_PRECISION_HINT\": \"f32\", "
                 f"\"KV_CACHE_PRECISION\": \"f32\"}}`; the CPU plugin's defaults (bf16/f16 compute where the CPU "
                 "has it, a u8 KV cache) are faster and less exact.")


def inspect(path: Path, as_json: bool) -> int:
    import click

    found = read_marker(path)
    config = jsontext.loads((Path(path) / "config.json").read_text(), f"{path}/config.json")
    plan_, base, ropeconv_info = engine_folder.ropeconv_view(FOLDER, path)
    files = sorted(p for p in Path(path).glob("openvino_*") if p.is_file())
    info = {
        "path": str(path), "format": "openvino", "architecture": config.get("model_type"),
        "rope_parameters": found.get("rope_parameters"), "weights": found.get("weights"),
        "group_size": found.get("group_size"), "max_position_embeddings": config.get("max_position_embeddings"),
        "bytes": sum(p.stat().st_size for p in files), "files": [p.name for p in files],
        "openvino": found.get("openvino"), "optimum_intel": found.get("optimum_intel"),
        "base": str(base) if base else None, "ropeconv": ropeconv_info,
    }
    if as_json:
        click.echo(jsontext.dumps(info, "--json output", indent=2, sort_keys=True, default=str))
        return 0
    click.echo(str(path))
    click.echo(f"  format           openvino (OpenVINO {found.get('openvino')}, optimum-intel "
               f"{found.get('optimum_intel')})")
    click.echo(f"  architecture     {config.get('model_type')}")
    click.echo(f"  rope_parameters  {found.get('rope_parameters')}")
    click.echo(f"  context          {config.get('max_position_embeddings')}")
    group = f", groups of {found.get('group_size')}" if found.get("weights") == "int4" else ""
    click.echo(f"  weights          {found.get('weights')}{group}, {info['bytes']:,} bytes in {len(files)} file(s)")
    if plan_ is not None:
        click.echo(engine_folder.ropeconv_line(plan_, base))
    return 0
