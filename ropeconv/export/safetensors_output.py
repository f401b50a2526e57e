"""The safetensors format's writer (formats.Writer) and model-card line: export.safetensors_writer's sharded,
hashed-while-written files, fed by the one streaming loop; a resampled position table comes from memory, every
other tensor is a byte copy."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ropeconv.export.card import _fmt
from ropeconv.export.safetensors_writer import INDEX_NAME, SafetensorsWriter
from ropeconv.export.table import changes_table, output_entry, resampled
from ropeconv.formats.base import Note, Serve
from ropeconv.formats.safetensors import SafetensorsPlan
from ropeconv.manifest import read_manifest
from ropeconv.positions import plan_from_json


class SafetensorsOutput:
    def __init__(self, splan: SafetensorsPlan, out: Path) -> None:
        p = splan.planning
        self.plan = p.plan
        self.out = Path(out)
        self._writer = SafetensorsWriter(self.out, [output_entry(p.plan, e) for e in p.checkpoint.tensors],
                                         p.job.max_shard_bytes)
        self._files: list[str] = []

    def write(self, entry, source) -> None:
        new = resampled(self.plan, entry, source) if changes_table(self.plan, entry) else None
        self._writer.write(output_entry(self.plan, entry), source, new)

    def close(self) -> None:
        self._files = self._writer.close()

    def abort(self) -> None:
        self._writer.abort()
        for name in [s.file for s in self._writer.shards] + [INDEX_NAME]:
            try:
                os.unlink(self.out / name)
            except FileNotFoundError:
                pass
        self._files = []
        self._writer.sha256.clear()  # nothing it hashed is there any more

    def files(self) -> list[str]:
        return list(self._files)

    def sha256(self) -> dict[str, str]:
        return dict(self._writer.sha256)


def writer(splan: SafetensorsPlan, out: Path, note: Note) -> SafetensorsOutput:
    return SafetensorsOutput(splan, out)


def recorded(folder: Path):
    """(plan, base) as the manifest.json beside the shards records them (config.json holds the declaration only)."""
    manifest = read_manifest(Path(folder)) or {}
    try:
        return plan_from_json(manifest["plan"]), Path(manifest["base"]["path"])
    except (KeyError, TypeError, ValueError):
        return None, None


def card_declaration(rec: dict[str, Any], plan) -> str | None:
    rope = rec.get("declaration")
    if rope is None:
        return None
    if plan.kind == "alibi":
        keys = ", ".join(f"`{k}`: {_fmt(v)}" for k, v in rope.items())
        return (f"transformers (`config.json`): `ropeconv_alibi_scaling` = {{{keys}}}, applied by "
                "`ropeconv.runtime.apply(model)`." if rope and plan.factor != 1.0 else
                "transformers (`config.json`): the base's own ALiBi, unchanged.")
    if plan.kind == "absolute":
        return (f"transformers (`config.json`): the resampled table `{plan.table}` and a context of "
                f"{plan.target_ctx} positions.")
    keys = ", ".join(f"`{k}`: {_fmt(v)}" for k, v in rope.items() if k not in ("short_factor", "long_factor"))
    return f"transformers (`config.json`, both `rope_parameters` and the 4.x `rope_theta` + `rope_scaling`): {keys}."


def serve(out: str, rec: Mapping[str, Any], plan) -> Serve | None:
    """transformers loading the folder as it is: config.json declares the plan for 5.x and 4.x alike."""
    if rec.get("declaration") is None:
        return None
    alibi = plan.kind == "alibi" and plan.factor != 1.0
    lines = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'model = AutoModelForCausalLM.from_pretrained("{out}", dtype="auto")',
             f'tokenizer = AutoTokenizer.from_pretrained("{out}")']
    if alibi:
        lines = ["import ropeconv.runtime", *lines, "ropeconv.runtime.apply(model)  # the scaled ALiBi slopes"]
    note = ("`config.json` carries the scaling (`rope_parameters` for transformers 5.x, `rope_theta` + `rope_scaling` "
            f"for 4.x), so nothing is passed at load time; prompts of up to {plan.target_ctx} tokens.")
    if alibi:
        note = ("Vanilla transformers ignores `ropeconv_alibi_scaling`: `ropeconv.runtime.apply(model)` installs the "
                f"scaled slopes; prompts of up to {plan.target_ctx} tokens.")
    return Serve("transformers", "\n".join(lines), "python", note)
