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
from ropeconv.recipe.schema import path_options, recipe_model

MAX_RECIPE_NODES = 100_000  # values in a recipe once YAML anchors are expanded; real ones hold < 100
# a recipe, and each file it names beside it (a factors file), is refused above this size before it is read:
# real ones are kilobytes, and PyYAML parses about a megabyte a second
MAX_RECIPE_BYTES = 1 << 20


@dataclass(frozen=True)
class Loaded:
    recipe: Any  # the validated recipe (recipe.schema.recipe_model())
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


def problems_of(file: Path, sets: tuple[str, ...] = (), fetch: bool = False) -> tuple[Loaded | None, list[str]]:
    """The loaded recipe, or None and every problem found ("FILE: yaml.path: what"). fetch: a base given as a Hub
    id is fetched (`recipe run`); else only its form is checked (`recipe check` needs no base)."""
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
        recipe = recipe_model().model_validate(data)
    except ValidationError as exc:
        return None, [f"{file}: {yaml_path(e['loc'])}{_TAG.get(e['type'], '')}: {e['msg']}" for e in exc.errors()]
    loaded = Loaded(recipe, file, "")
    problems = []
    sidecars = {}
    for name, value in path_options(recipe).items():
        path = loaded.resolve(value)
        if not os.path.lexists(path):
            problems.append(f"{file}: method.{name}: {value} not found (beside the recipe)")
            continue
        try:
            sidecars[name] = read_bytes(path, MAX_RECIPE_BYTES, f"method.{name} file")
        except InputError as exc:
            problems.append(f"{file}: method.{name}: {exc}")
    formats = [o.format for o in recipe.outputs]  # type: ignore[attr-defined]  # a model made at run time
    if len(set(formats)) != len(formats):
        problems.append(f"{file}: outputs: a format is listed twice")
    if problems:
        return None, problems
    loaded = Loaded(recipe, file, _digest(loaded, sidecars))
    try:
        job = job_for(loaded, fetch=fetch)  # what the run would refuse before reading the base, check refuses too
    except InputError as exc:
        return None, [f"{file}: {exc}"]
    return replace(loaded, job=job), []


PUSH_KEYS = ("push", "private")  # the top-level keys that say where the output goes after it is made


def _digest(loaded: Loaded, sidecars: dict[str, bytes]) -> str:
    # where the output is pushed is not part of what it is: adding `push` to a recipe whose output is up to date
    # rebuilds nothing (`ropeconv push OUT REPO` uploads it). Keys left unset (None) are left out, so an option a
    # new release adds (a format's, say) does not change the hash of a recipe that does not use it
    content = loaded.recipe.model_dump(mode="json", exclude=set(PUSH_KEYS), exclude_none=True)
    h = hashlib.sha256(json.dumps(content, sort_keys=True).encode())
    for name in sorted(sidecars):
        h.update(sidecars[name])  # a sidecar's content is part of the recipe
    return h.hexdigest()


def job_for(loaded: Loaded, force: bool = False, fetch: bool = True):
    """The recipe as an extend job, through the function `ropeconv extend` uses (extend.options.build_job), with
    every check that needs no base: the request, formats, each format's options, shard size, adapters' scalings.
    base.path is a path beside the recipe when one is there, else a Hub id (ORG/NAME[@REVISION][:FILE.gguf]) when
    it has that form, fetched when `fetch`."""
    from ropeconv.extend.options import build_job
    from ropeconv.hub.base import HubRef, parse_ref

    r = loaded.recipe
    path = loaded.resolve(r.base.path)
    base: Path | HubRef = path if os.path.lexists(path) else (parse_ref(r.base.path) or path)
    method = r.method
    options = {k: v for k, v in method.model_dump().items() if k not in ("name", "factor", "target_ctx")
               and v is not None}
    options.update({k: loaded.resolve(v) for k, v in path_options(r).items()})
    format_values: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(r.outputs):
        given = {k: v for k, v in item.model_dump().items() if k != "format" and v is not None}
        for key, value in given.items():
            fmt = _owner(key)
            if fmt != item.format:  # the item's format must be the option's: name it by the item's path
                raise InputError(f"outputs.{index}.{key}: belongs to the {fmt} output, not {item.format}")
            format_values.setdefault(fmt, {})[key] = loaded.resolve(value) if key in _path_keys(fmt) else value
    card = r.card.model_dump(exclude_defaults=True)
    return build_job(
        base, method.name, factor=method.factor, target_ctx=method.target_ctx, method_options=options,
        values={
            "base": {"original_ctx": r.base.original_ctx, "rebase": r.base.rebase, "allow_pickle": r.base.allow_pickle},
            "lora": {"paths": tuple(loaded.resolve(a.path) for a in r.lora), "trained_with": _one_trained_with(r),
                     "force_method": r.force_method},
            "output": {"formats": ",".join(o.format for o in r.outputs), "out": loaded.resolve(r.out),
                       "force": force, "max_shard_size": r.max_shard_size, "name": r.name, "push": r.push,
                       "private": r.private},
            "parity": {"verify": r.parity.verify, "max_abs_logit": r.parity.max_abs_logit, "tokens": r.parity.tokens,
                       "device": r.parity.device, "verify_in": tuple(r.parity.verify_in)},
            "card": card,
        },
        format_values=format_values,
        fetch_hub=fetch,
        recipe={"file": str(loaded.file.resolve()), "sha256": loaded.sha256},
        name=_yaml_name,
    )


_SECTIONS = {"base": "base.", "parity": "parity.", "card": "card.", "output": "", "lora": ""}


def _yaml_name(group: str, field: str, _spec: Any) -> str:
    """A message's name for an option in a recipe: its YAML path (a format's options sit in the output items)."""
    return f"{_SECTIONS.get(group, 'outputs[].')}{field}"


def _owner(key: str) -> str:
    """The format whose options group declares this output-item key."""
    from ropeconv.extend.options import format_groups
    from ropeconv.optionfields import fields_of

    return next(fmt for fmt, group in format_groups().items() if any(f.name == key for f, _ in fields_of(group)))


def _path_keys(fmt: str) -> set[str]:
    from ropeconv.extend.options import format_groups
    from ropeconv.optionfields import fields_of

    return {f.name for f, spec in fields_of(format_groups()[fmt]) if spec.schema == "path"}


def _one_trained_with(recipe: Any) -> str | None:
    given = {a.trained_with for a in recipe.lora if a.trained_with}
    if len(given) > 1:
        raise InputError("lora: adapters trained under different scalings cannot be merged into one model")
    return next(iter(given), None)


def load_recipe(file: Path, sets: tuple[str, ...] = (), fetch: bool = True) -> Loaded:
    loaded, problems = problems_of(file, sets, fetch)
    if problems:
        raise RecipeErrors(problems)
    assert loaded is not None
    return loaded
