"""Reading a recipe: YAML, `--set a.b=c` overrides, validation, and every error at once with its YAML path."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ropeconv import jsontext
from ropeconv.errors import InputError
from ropeconv.inputfile import read_bytes
from ropeconv.recipe.schema import Recipe

MAX_RECIPE_NODES = 100_000  # values in a recipe once YAML anchors are expanded; real ones hold < 100
# a recipe, and each file it names beside it (a factors file), is refused above this size before it is read:
# real ones are kilobytes, and PyYAML parses about a megabyte a second
MAX_RECIPE_BYTES = 1 << 20


@dataclass(frozen=True)
class Loaded:
    recipe: Recipe
    file: Path
    sha256: str  # of the validated recipe (overrides applied) and the files it names beside it
    job: Any = None  # the pipeline's ExtendJob (force off), built and checked without the base

    def resolve(self, text: str) -> Path:
        """A path written in the recipe: relative ones are relative to the recipe's folder."""
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.file.parent / path


class RecipeErrors(InputError):
    """Every problem of one or more recipes; str() is one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        more = f" (and {len(problems) - 1} more: ropeconv recipe check shows them all)" if len(problems) > 1 else ""
        super().__init__(problems[0] + more)


def apply_set(data: dict, assignment: str) -> None:
    """a.b.c=value (value read as YAML: numbers, booleans, lists); list items by index (outputs.0.dtype)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--set {assignment!r}: expected KEY=VALUE, e.g. method.factor=8")
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: i + 1]), assignment)
    last = parts[-1]
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise InputError(f"--set {assignment!r}: the value is not valid YAML "
                         f"({getattr(exc, 'problem', None) or exc})") from None
    if isinstance(node, list):
        index = _index(node, last, key, assignment)
        node[index] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise InputError(f"--set {assignment!r}: {'.'.join(parts[:-1])} is not a section")


def _child(node: Any, part: str, where: str, assignment: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where, assignment)]
    if not isinstance(node, dict):
        raise InputError(f"--set {assignment!r}: {where} is not a section")
    return node.setdefault(part, {})


def _index(node: list, part: str, where: str, assignment: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise InputError(f"--set {assignment!r}: {where}: no item {part} (the list has {len(node)})")
    return int(part)


_TAG = {"union_tag_invalid": ".name", "union_tag_not_found": ".name"}  # the method's tag is its name


def yaml_path(loc: tuple) -> str:
    parts = [str(p) for p in loc]
    # the method union adds its tag to the path: method.yarn.factor → method.factor
    if len(parts) > 2 and parts[0] == "method":
        parts.pop(1)
    return ".".join(parts) or "(top)"


def problems_of(file: Path, sets: tuple[str, ...] = ()) -> tuple[Loaded | None, list[str]]:
    """The loaded recipe, or None and every problem found ("FILE: yaml.path: what")."""
    file = Path(file)
    try:
        text = read_bytes(file, MAX_RECIPE_BYTES, "recipe").decode("utf-8")
    except InputError as exc:
        return None, [str(exc)]
    except UnicodeDecodeError:
        return None, [f"{file}: not UTF-8 text"]
    try:
        data = yaml.safe_load(text)
        # a recipe is a few nested sections: refuse what would exhaust a recursive consumer (anchors can
        # multiply a small file into billions of nodes, or make a section contain itself)
        jsontext.check_tree(data, str(file), finite=False, max_nodes=MAX_RECIPE_NODES)
    except RecursionError:
        return None, [f"{file}: nested more than {jsontext.MAX_DEPTH} levels deep"]
    except InputError as exc:
        return None, [str(exc)]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return None, [f"{file}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}"]
    if not isinstance(data, dict):
        return None, [f"{file}: (top): expected a mapping of sections (base, method, outputs, out, …)"]
    for assignment in sets:
        try:
            apply_set(data, assignment)
        except InputError as exc:
            return None, [f"{file}: {exc}"]
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        return None, [f"{file}: {yaml_path(e['loc'])}{_TAG.get(e['type'], '')}: {e['msg']}" for e in exc.errors()]
    loaded = Loaded(recipe, file, "")
    problems = []
    sidecars = {}
    for name, value in recipe.path_options().items():
        path = loaded.resolve(value)
        if not os.path.lexists(path):
            problems.append(f"{file}: method.{name}: {value} not found (beside the recipe)")
            continue
        try:
            sidecars[name] = read_bytes(path, MAX_RECIPE_BYTES, f"method.{name} file")
        except InputError as exc:
            problems.append(f"{file}: method.{name}: {exc}")
    formats = [o.format for o in recipe.outputs]
    if len(set(formats)) != len(formats):
        problems.append(f"{file}: outputs: a format is listed twice")
    if problems:
        return None, problems
    loaded = Loaded(recipe, file, _digest(loaded, sidecars))
    try:
        job = job_for(loaded)  # what the run would refuse before reading the base, check refuses too
    except InputError as exc:
        return None, [f"{file}: {exc}"]
    return replace(loaded, job=job), []


def _digest(loaded: Loaded, sidecars: dict[str, bytes]) -> str:
    h = hashlib.sha256(json.dumps(loaded.recipe.model_dump(mode="json"), sort_keys=True).encode())
    for name in sorted(sidecars):
        h.update(sidecars[name])  # a sidecar's content is part of the recipe
    return h.hexdigest()


def job_for(loaded: Loaded, force: bool = False):
    """The recipe as an extend job, with every check that needs no base: the request (methods.check_request,
    which extend's resolve_lengths also runs), formats, outtype/dtype, shard size, adapters' scalings."""
    from ropeconv import methods
    from ropeconv.extend.job import ExtendJob, parse_formats
    from ropeconv.methods.base import ExtendRequest
    from ropeconv.parity import Tolerance
    from ropeconv.sizes import parse_bytes

    r = loaded.recipe
    base = loaded.resolve(r.base.path)
    method = r.method
    options = {k: v for k, v in method.model_dump().items() if k not in ("name", "factor", "target_ctx")
               and v is not None}
    options.update({k: loaded.resolve(v) for k, v in r.path_options().items()})
    request = ExtendRequest(factor=method.factor, target_ctx=method.target_ctx, original_ctx=r.base.original_ctx,
                            options=options)
    methods.check_request(methods.get(method.name), request)
    outtypes = {o.outtype for o in r.outputs if o.outtype}
    dtypes = {o.dtype for o in r.outputs if o.dtype}
    if any((o.outtype or o.imatrix) and o.format != "gguf" for o in r.outputs) or any(o.dtype and o.format != "onnx"
                                                                                       for o in r.outputs):
        raise InputError("outputs: outtype and imatrix belong to gguf, dtype to onnx")
    imatrix = next((loaded.resolve(o.imatrix) for o in r.outputs if o.imatrix), None)
    return ExtendJob(
        base=base,
        method=method.name,
        request=request,
        out=loaded.resolve(r.out),
        formats=parse_formats(",".join(o.format for o in r.outputs), base),
        outtype=next(iter(outtypes), "f16"),
        imatrix=imatrix,
        onnx_dtype=next(iter(dtypes), "fp32"),
        force=force,
        rebase=r.base.rebase,
        allow_pickle=r.base.allow_pickle,
        max_shard_bytes=parse_bytes("max_shard_size", r.max_shard_size),
        verify=r.parity.verify,
        lora=tuple(loaded.resolve(a.path) for a in r.lora),
        lora_trained_with=_one_trained_with(r),
        force_method=r.force_method,
        device=r.parity.device,
        tokens=r.parity.tokens,
        tolerance=Tolerance(max_abs_logit=r.parity.max_abs_logit),
        recipe={"file": str(loaded.file.resolve()), "sha256": loaded.sha256},
        card=r.card.model_dump(exclude_defaults=True) or None,
        name=r.name,
    )


def _one_trained_with(recipe: Recipe) -> str | None:
    given = {a.trained_with for a in recipe.lora if a.trained_with}
    if len(given) > 1:
        raise InputError("lora: adapters trained under different scalings cannot be merged into one model")
    return next(iter(given), None)


def load_recipe(file: Path, sets: tuple[str, ...] = ()) -> Loaded:
    loaded, problems = problems_of(file, sets)
    if problems:
        raise RecipeErrors(problems)
    assert loaded is not None
    return loaded
