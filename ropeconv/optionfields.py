"""Options declared once, as fields of the frozen dataclass they belong to, and read by both front ends.

A group of a job's options (the output's, the parity check's, the card's, each format's own) is a frozen dataclass
whose fields carry an `OptionSpec` in their metadata: the help text, the command-line flags, and whether (and with
which constraints) the field is a key of its recipe section. `ropeconv extend` builds its click options from the
groups (cli.options.group_decorators) and the recipe schema builds its sections from the same groups
(recipe.schema.section_model), so a new option is one field here and shows up in both, with one help text.

    @dataclass(frozen=True)
    class ParityOptions:
        tokens: int | None = option("parity probe length", flags=("--tokens",), click={"type": int},
                                    schema=Length, constraints={"ge": 2})

This module is at the bottom of the layers: it names no click or pydantic type (the front ends turn the spec into
theirs), so a format's record can declare its options without importing either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

KEY = "ropeconv.option"  # the dataclass field metadata key holding the OptionSpec


@dataclass(frozen=True)
class OptionSpec:
    help: str
    # click's declarations ("-o", "--out"; or "--verify/--no-verify"); empty: not on the command line
    flags: tuple[str, ...] = ()
    # the field is a key of its recipe section (same name); False: command line only
    recipe: bool = True
    # click keyword arguments beyond help: type ("int", "float", "path"), choices, multiple, is_flag, metavar,
    # default (what click passes when the flag is absent) and show_default; required=True is required in a recipe too
    click: Mapping[str, Any] = field(default_factory=dict)
    # the recipe's type when it is not plain text, a number or a flag: "length" (a token count), "path" (a file
    # name, relative to the recipe), "list" (a list of text), or a tuple of the values allowed; and pydantic Field
    # constraints (gt, ge)
    schema: Any = None
    constraints: Mapping[str, Any] = field(default_factory=dict)
    # a format option that applies only when a HuggingFace base is converted (a GGUF base keeps its tensors)
    converts_only: bool = False

    @property
    def flag(self) -> str:
        """The long flag a message names (the first declaration that is one)."""
        long = next((f for f in self.flags if f.startswith("--")), "")
        return long.split("/")[0]


def option(help: str, default: Any = None, **spec: Any) -> Any:
    """A dataclass field with its OptionSpec; `default` may be a list (a fresh copy each time) or a value."""
    metadata = {KEY: OptionSpec(help, **spec)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def fields_of(group: type) -> Iterator[tuple[dataclasses.Field, OptionSpec]]:
    """(field, its spec) of a group, in declaration order; fields without a spec are the group's own business."""
    for f in dataclasses.fields(group):
        spec = f.metadata.get(KEY)
        if spec is not None:
            yield f, spec


def spec_of(group: type, name: str) -> OptionSpec:
    return next(spec for f, spec in fields_of(group) if f.name == name)


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def given(group: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The group's fields that `values` holds and sets (None, an empty list: not given)."""
    return {f.name: values[f.name] for f, _ in fields_of(group)
            if f.name in values and values[f.name] is not None and not _empty(values[f.name])}


def _empty(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and not value


def build(group: type, values: Mapping[str, Any]) -> Any:
    """The group from the values given; a field not given keeps the group's default."""
    return group(**given(group, values))
