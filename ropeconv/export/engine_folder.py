"""A folder an engine's own converter writes (mlx-lm's convert, optimum-intel's exporter): the half the mlx and
openvino formats share.

The writer stages a transformers folder in <out>/<staging> (the safetensors writer's shards, the extended config.json
declaring the plan, the tokenizer files), and close() hands it to the format's converter, which writes <out>/<home>
and returns the marker: the JSON file (MARKER) that records the plan, base and conversion and claims the folder as
the format's artifact. The staging folder is then removed; abort() removes both. Also here: the marker read back
(`recorded`: the plan and base), the base's own weights staged with the plan's config.json (what a float32 twin is
converted from), and the ropeconv line `inspect` shows."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv import jsontext
from ropeconv.errors import InputError
from ropeconv.export.tokenizer_files import copy_aux_files
from ropeconv.formats.base import Planning
from ropeconv.formats.safetensors import SafetensorsPlan
from ropeconv.provenance import BASE_KEY, PLAN_KEY


@dataclass(frozen=True)
class EngineFolder:
    """Where a format's converted folder lives in an output, and how it is marked."""

    engine: str  # the converter's engine as messages name it ("mlx", "OpenVINO")
    home: str  # the folder in the output directory (mlx/, openvino/)
    staging: str  # the staged transformers folder beside it, removed once converted
    marker: str  # the marker file inside home


def write_config(folder: Path, config: dict[str, Any], sort_keys: bool = True) -> None:
    (folder / "config.json").write_text(jsontext.dumps(config, "config.json", indent=2, sort_keys=sort_keys) + "\n")


class EngineFolderWriter:
    """formats.Writer of an engine-converted folder: `convert(staging, home)` runs the engine's converter and returns
    the marker's contents (it raises where the converter failed or wrote something other than planned)."""

    def __init__(self, where: EngineFolder, planning: Planning, config: dict[str, Any], out: Path,
                 convert: Callable[[Path, Path], dict[str, Any]]) -> None:
        from ropeconv.export.safetensors_output import SafetensorsOutput

        self.where, self.planning, self.config, self.convert = where, planning, config, convert
        self.out = Path(out)
        self.staging, self.home = self.out / where.staging, self.out / where.home
        self.staging.mkdir()
        try:
            self._staged = SafetensorsOutput(SafetensorsPlan(planning, planning.hf_rope), self.staging)
        except BaseException:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise
        self._files: list[str] = []

    def write(self, entry, source) -> None:
        self._staged.write(entry, source)

    def close(self) -> None:
        self._staged.close()
        write_config(self.staging, self.config)
        copy_aux_files(self.planning.checkpoint, self.staging)
        marker = self.convert(self.staging, self.home)
        shutil.rmtree(self.staging, ignore_errors=True)
        (self.home / self.where.marker).write_text(jsontext.dumps(marker, self.where.marker, indent=2,
                                                                  sort_keys=True) + "\n")
        self._files = sorted(p.relative_to(self.out).as_posix() for p in self.home.rglob("*") if p.is_file())

    def abort(self) -> None:
        self._staged.abort()
        shutil.rmtree(self.staging, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)
        self._files = []

    def files(self) -> list[str]:
        return list(self._files)

    def sha256(self) -> dict[str, str]:
        return {}  # the engine's converter wrote them: the manifest hashes them


def read_marker(where: EngineFolder, folder: Path) -> dict[str, Any]:
    path = Path(folder) / where.marker
    if not path.is_file():
        raise InputError(f"{folder}: no {where.marker} (not an {where.engine} folder written by ropeconv)")
    found = jsontext.loads(path.read_text(), str(path))
    if not isinstance(found, dict):
        raise InputError(f"{path}: not a JSON object")
    return found


def recorded(where: EngineFolder, folder: Path):
    """(plan, base) as the folder's marker records them."""
    from ropeconv.positions import plan_from_json

    found = read_marker(where, folder)
    try:
        plan = plan_from_json(jsontext.loads(found[PLAN_KEY], PLAN_KEY))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{folder}/{where.marker}: {PLAN_KEY} is damaged ({exc})") from None
    return plan, (Path(found[BASE_KEY]) if found.get(BASE_KEY) else None)


def stage_source(base: Path, position_plan, staging: Path, sort_keys: bool = False) -> Path:
    """A transformers folder of the base's own weights (linked) with the plan's config.json and the base's tokenizer
    files: what a float32 twin is converted from."""
    from ropeconv import methods
    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.export.hf_config import extended_config

    ckpt = load_checkpoint(base)
    hf_rope = methods.get(position_plan.method).hf_rope_parameters(position_plan)
    config = extended_config(ckpt.config, ckpt.arch, ckpt.scheme, position_plan, hf_rope)
    staging.mkdir()
    for weights in [*base.glob("*.safetensors"), *base.glob("*.safetensors.index.json")]:
        (staging / weights.name).symlink_to(weights.resolve())
    write_config(staging, config, sort_keys)
    copy_aux_files(ckpt, staging)
    return staging


def twin_writer(base: Path, position_plan, lora, convert: Callable[[Path, Path], Any]):
    """The float32 twin converted from the base's own weights with the plan's config.json (formats.Twin), or None
    where it cannot be made so (LoRA merged, pickle weights)."""
    base = Path(base)
    if lora is not None or not any(base.glob("*.safetensors")):
        return None

    def write(dst: Path) -> Path:
        staging = dst.with_name(dst.name + ".staging")
        try:
            stage_source(base, position_plan, staging)
            convert(staging, dst)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dst

    return write


def ropeconv_view(where: EngineFolder, folder: Path):
    """(plan, base, the inspect --json "ropeconv" entry), all None where the marker records no plan."""
    try:
        plan, base = recorded(where, folder)
    except InputError:
        return None, None, None
    return plan, base, {"method": plan.method, "original_ctx": plan.original_ctx, "target_ctx": plan.target_ctx}


def ropeconv_line(plan, base) -> str:
    return f"  ropeconv         {plan.method}, {plan.original_ctx} → {plan.target_ctx} tokens, base {base}"
