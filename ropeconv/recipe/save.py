"""`extend … --save-recipe FILE`: the command line as a recipe that `ropeconv recipe run FILE` repeats.

FILE is published like every output (ropeconv.export.staging): checked before the run (never the output, inside
it or inside the base; never over a file that is not a recipe ropeconv saved, a link or a special file), written
staged beside FILE before the run starts — so a read-only or full folder is refused before anything is
published — and renamed into place only when the command succeeds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ropeconv.errors import InputError
from ropeconv.export.staging import Proof, overlap_refusal, staged_file
from ropeconv.extend.options import output_item
from ropeconv.inputfile import read_bytes
from ropeconv.recipe.load import MAX_RECIPE_BYTES  # a larger file is no recipe ropeconv saved
from ropeconv.recipe.schema import recipe_model

HEADER = "# written by `ropeconv extend --save-recipe`; run it with `ropeconv recipe run`\n"


def recipe_of(job) -> dict[str, Any]:
    """Paths are written absolute: the recipe may be saved anywhere."""
    method: dict[str, Any] = {"name": job.method}
    if job.request.factor is not None:
        method["factor"] = job.request.factor
    if job.request.target_ctx is not None:
        method["target_ctx"] = job.request.target_ctx
    for key, value in job.request.options.items():
        method[key] = str(Path(value).resolve()) if isinstance(value, Path) else value
    outputs = [output_item(job, fmt) for fmt in job.formats]
    # a Hub base as it was asked (ORG/NAME[@REVISION][:FILE.gguf]): the run fetches it again, the manifest
    # records the commit
    base: dict[str, Any] = {"path": job.hub.text if job.hub is not None else str(Path(job.base).resolve())}
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
    if job.push:
        data["push"] = job.push
        if not job.private:
            data["private"] = False
    data["parity"] = {"verify": job.verify, "max_abs_logit": job.tolerance.max_abs_logit,
                      "device": job.device or "auto", **({"tokens": job.tokens} if job.tokens else {}),
                      **({"verify_in": list(job.verify_in)} if job.verify_in else {})}
    return data


def recipe_text(job, file: Path, max_shard_size: str) -> str:
    """The recipe `--save-recipe FILE` will write, checked before the run starts: it must load (the schema
    recipe run uses) and FILE must be a place for it (see the module's docstring). Writes nothing."""
    from pydantic import ValidationError

    from ropeconv.files import refuse_special
    from ropeconv.recipe.load import yaml_path

    data = recipe_of(job)
    data["max_shard_size"] = max_shard_size
    try:
        recipe_model().model_validate(data)  # what is saved must load
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(f"--save-recipe {file}: this command cannot be saved as a recipe: "
                         f"{yaml_path(first['loc'])}: {first['msg']}") from None
    file = Path(file)
    if not file.parent.is_dir():
        raise InputError(f"--save-recipe {file}: its folder does not exist")
    refuse_special(file, "--save-recipe")
    reason = overlap_refusal(file, [("output", job.out), ("base", job.base)]) \
        or overlap_refusal(job.out, [("--save-recipe path", file)])  # -o R/out would make R a folder first
    if reason:
        raise InputError(reason if "--save-recipe" in reason else f"--save-recipe {reason}")
    return HEADER + yaml.safe_dump(data, sort_keys=False)


@contextlib.contextmanager
def saving(file: Path, text: str) -> Iterator[None]:
    """Around the command's work: FILE's lock held and `text` written staged beside it now (an OS error is one
    line before any work), renamed into place when the block succeeds."""
    with staged_file(Path(file), True, proof=SAVED_RECIPE) as tmp:  # a recipe it saved before is replaced
        tmp.write_text(text)
        yield


def _saved_recipe(path: Path) -> bool:
    try:
        return read_bytes(path, MAX_RECIPE_BYTES, "recipe").startswith(HEADER.encode())
    except InputError:
        return False


SAVED_RECIPE = Proof("a recipe ropeconv saved", "its first line is not ropeconv's", _saved_recipe)
