"""`extend … --save-recipe FILE`: the command line as a recipe that `ropeconv recipe run FILE` repeats."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ropeconv.errors import InputError
from ropeconv.formats import FORMATS
from ropeconv.recipe.schema import Recipe


def recipe_of(job) -> dict[str, Any]:
    """Paths are written absolute: the recipe may be saved anywhere."""
    method: dict[str, Any] = {"name": job.method}
    if job.request.factor is not None:
        method["factor"] = job.request.factor
    if job.request.target_ctx is not None:
        method["target_ctx"] = job.request.target_ctx
    for key, value in job.request.options.items():
        method[key] = str(Path(value).resolve()) if isinstance(value, Path) else value
    outputs = []
    for fmt in job.formats:
        outputs.append({"format": fmt, **FORMATS[fmt].options(job)})
    base: dict[str, Any] = {"path": str(Path(job.base).resolve())}
    if job.request.original_ctx is not None:
        base["original_ctx"] = job.request.original_ctx
    if job.rebase:
        base["rebase"] = True
    if job.allow_pickle:
        base["allow_pickle"] = True
    data: dict[str, Any] = {"base": base}
    if job.lora:
        data["lora"] = [dict({"path": str(Path(p).resolve())},
                             **({"trained_with": job.lora_trained_with} if job.lora_trained_with else {}))
                        for p in job.lora]
    data.update({"method": method, "outputs": outputs, "out": str(Path(job.out).resolve())})
    if job.force_method:
        data["force_method"] = True
    if job.card:
        data["card"] = dict(job.card)
    if job.name:
        data["name"] = job.name
    data["parity"] = {"verify": job.verify, "max_abs_logit": job.tolerance.max_abs_logit,
                      "device": job.device or "auto", **({"tokens": job.tokens} if job.tokens else {})}
    return data


def recipe_text(job, file: Path, max_shard_size: str) -> str:
    """The recipe `--save-recipe FILE` will write, checked before the run starts: it must load (the schema
    recipe run uses) and FILE must be a writable place for it. Writes nothing."""
    from pydantic import ValidationError

    from ropeconv.files import refuse_special
    from ropeconv.recipe.load import yaml_path

    data = recipe_of(job)
    data["max_shard_size"] = max_shard_size
    try:
        Recipe.model_validate(data)  # what is saved must load
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(f"--save-recipe {file}: this command cannot be saved as a recipe: "
                         f"{yaml_path(first['loc'])}: {first['msg']}") from None
    file = Path(file)
    if not file.parent.is_dir():
        raise InputError(f"--save-recipe {file}: its folder does not exist")
    refuse_special(file, "--save-recipe")
    return ("# written by `ropeconv extend --save-recipe`; run it with `ropeconv recipe run`\n"
            + yaml.safe_dump(data, sort_keys=False))


def write_recipe(file: Path, text: str) -> None:
    """Called once the command succeeded: a refused or failed run saves nothing."""
    from ropeconv.files import refuse_special

    file = Path(file)
    refuse_special(file, "--save-recipe")
    tmp = file.with_name(f".{file.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, file)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"--save-recipe {file}: cannot write ({exc.strerror or exc})") from None
