"""The recipe schema (pydantic v2), built from the declarations `ropeconv extend` builds its flags from: the method
section is a tagged union with one type per method module, from the module's own OPTIONS (adding a method adds its
recipe type); the base, parity and card sections and the top-level keys are extend's options groups
(extend.options); an output item's format is one of the format registry's and its keys each format's own options
group. recipe_model() builds it for the formats registered when it is asked (a format registered later counts)."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model

from ropeconv import methods
from ropeconv.extend.options import (
    BaseOptions,
    CardOptions,
    LoraOptions,
    OutputOptions,
    ParityOptions,
    format_groups,
)
from ropeconv.formats import FORMATS
from ropeconv.inputfile import MAX_PATH_CHARS
from ropeconv.methods.base import MAX_CTX
from ropeconv.optionfields import OptionSpec, default_of, fields_of, spec_of


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a whole number, not true/false")
    return value


def _path_text(text: str) -> str:
    if "\0" in text:
        raise ValueError("a file name cannot hold a NUL byte")
    return text


# a path written in a recipe: text any system call can take (a NUL byte would raise ValueError in the first one)
PathText = Annotated[str, Field(max_length=MAX_PATH_CHARS), AfterValidator(_path_text)]
# a count of tokens: positions are int32 in every runtime
Length = Annotated[int, Field(gt=0, le=MAX_CTX), BeforeValidator(_not_bool)]


class Strict(BaseModel):
    # no inf/nan anywhere: YAML's .inf and an overflowing 1e400 are refused with their path
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


_SCHEMA = {"length": Length, "path": PathText, "list": list[str]}


def _annotation(f, spec: OptionSpec, hints: dict[str, Any]) -> Any:
    """The recipe's type of a field: its spec's schema (a constrained alias, or the values allowed), else its own."""
    if isinstance(spec.schema, tuple):
        kind: Any = Literal[spec.schema]  # the values allowed, from a record
    elif spec.schema is not None:
        kind = _SCHEMA[spec.schema]
    else:
        kind = hints[f.name]
    return kind


def _fields(group: type, *, optional: bool = False) -> dict[str, Any]:
    """pydantic fields for the group's recipe fields: same names, the group's defaults and help texts; optional:
    every field defaults to None (a format's options in an output item: the job fills the group's defaults)."""
    hints = typing.get_type_hints(group, include_extras=True)
    found: dict[str, Any] = {}
    for f, spec in fields_of(group):
        if not spec.recipe:
            continue
        kind = _annotation(f, spec, hints)
        if spec.click.get("required"):
            found[f.name] = (kind, Field(..., description=spec.help, **spec.constraints))
            continue
        default = None if optional else default_of(f)
        if isinstance(default, tuple):
            default = list(default)
        nullable = kind | None if default is None and spec.schema is not None else kind
        found[f.name] = (nullable, Field(default, description=spec.help, **spec.constraints))
    return found


def section_model(title: str, group: type, extra: dict[str, Any] | None = None) -> type[BaseModel]:
    """A recipe section (base, parity, card) made from an options group (extend.options)."""
    return create_model(title, __base__=Strict, __doc__=group.__doc__, **(extra or {}), **_fields(group))


Base = section_model("Base", BaseOptions, {"path": (PathText, Field(
    description="a HuggingFace model directory or a GGUF file (relative to the recipe)"))})
Parity = section_model("Parity", ParityOptions)
Card = section_model("Card", CardOptions)


class Lora(Strict):
    path: PathText = Field(description="a PEFT LoRA adapter directory (relative to the recipe)")
    trained_with: str | None = Field(None, description=spec_of(LoraOptions, "trained_with").help)


def output_model() -> type[BaseModel]:
    """An output item: the format, one of the registry's (read when asked: a format registered later counts), and
    every format's own options (extend.build_job refuses those that are not the item's format's)."""
    options: dict[str, Any] = {}
    for group in format_groups().values():
        options.update(_fields(group, optional=True))
    fields: dict[str, Any] = {"format": (Literal[tuple(FORMATS)], ...), **options}
    return create_model("Output", __base__=Strict, **fields)


_KINDS: dict[type, Any] = {int: int, float: float, bool: bool, Path: PathText}


def _method_model(module) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "name": (Literal[module.NAME], ...),
        "factor": (float | None, Field(None, gt=1)),
        "target_ctx": (Length | None, Field(None)),
    }
    for opt in module.OPTIONS:
        fields[opt.name] = (_KINDS[opt.kind] | None, Field(None, description=opt.help))
    title = "".join(part.title() for part in module.NAME.split("_")) + "Method"
    return create_model(title, __base__=Strict, __doc__=module.SUMMARY, **fields)


METHOD_MODELS = {m.NAME: _method_model(m) for m in methods.ordered()}
Method = Annotated[Union[tuple(METHOD_MODELS.values())], Field(discriminator="name")]  # type: ignore[valid-type]  # noqa: UP007 - a Union built from a tuple has no X | Y spelling


def _recipe_model() -> type[BaseModel]:
    fields: dict[str, Any] = {
        "base": (Base, ...),
        "lora": (list[Lora], []),
        "method": (Method, ...),
        "outputs": (list[output_model()], Field(min_length=1)),  # type: ignore[misc]  # a model made at run time
        **_fields(OutputOptions),  # out, max_shard_size, name
        **_fields(LoraOptions),  # force_method
        "parity": (Parity, Parity()),
        "card": (Card, Card()),
    }
    return create_model("Recipe", __base__=Strict,
                        __doc__="A recipe: `ropeconv recipe run FILE` is one `ropeconv extend`.", **fields)


_MODELS: dict[tuple[tuple[str, type | None], ...], type[BaseModel]] = {}


def recipe_model() -> type[BaseModel]:
    """The recipe schema for the formats registered now (made once per set of formats and their options)."""
    key = tuple((name, fmt.options_group) for name, fmt in FORMATS.items())
    if key not in _MODELS:
        _MODELS[key] = _recipe_model()
    return _MODELS[key]


def path_options(recipe: Any) -> dict[str, str]:
    """A recipe's method options that name files (resolved against the recipe's folder)."""
    module = methods.get(recipe.method.name)
    return {o.name: getattr(recipe.method, o.name) for o in module.OPTIONS
            if o.kind is Path and getattr(recipe.method, o.name) is not None}
