"""Shared option parsing: byte sizes, JSON output, and method options built from the method modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import click

from ropeconv import jsontext, methods
from ropeconv.errors import InputError
from ropeconv.inputfile import check_path
from ropeconv.methods.base import Option
from ropeconv.sizes import parse_bytes  # noqa: F401  (re-exported: the CLI's size flags)


class UserPath(click.Path):
    """click.Path → pathlib.Path, refusing in one line what no system call can take (a NUL byte, a symbolic link
    loop: inputfile.check_path) before any command code sees it."""

    def __init__(self) -> None:
        super().__init__(path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        what = (param.opts[0] if param.param_type_name == "option" else param.name.upper()) if param else "path"
        check_path(value, what)  # first: click's own os.stat raises ValueError on a NUL byte
        return cast(Path, super().convert(value, param, ctx))  # path_type=Path


PATH = UserPath()  # every path a command takes


def group_decorators(group: type, prefix: str, **help_values: str) -> list:
    """click options for the fields of an options group (optionfields) that have flags, each under the parameter
    name PREFIX__FIELD (group_values reads them back); help texts may hold {placeholders} filled from help_values."""
    from ropeconv.optionfields import fields_of

    decorators = []
    for f, spec in fields_of(group):
        if not spec.flags:
            continue
        kwargs = dict(spec.click)
        choices = kwargs.pop("choices", None)
        kind = kwargs.pop("type", None)
        if choices is not None:
            kwargs["type"] = click.Choice(list(choices))
        elif kind is not None:
            kwargs["type"] = {"int": int, "float": float, "path": PATH}[kind]
        decorators.append(click.option(*spec.flags, f"{prefix}__{f.name}", help=spec.help.format(**help_values) if help_values else spec.help,
                                       **kwargs))
    return decorators


def group_values(prefix: str, params: dict[str, Any]) -> dict[str, Any]:
    """The values click parsed for one group's options (group_decorators), removed from params."""
    start = f"{prefix}__"
    return {key[len(start):]: params.pop(key) for key in [k for k in params if k.startswith(start)]}


def max_memory_option(f):
    """extend's --max-memory (its parity group), for the other commands that place transformers models."""
    from ropeconv.extend.options import ParityOptions
    from ropeconv.optionfields import spec_of

    return click.option("--max-memory", help=spec_of(ParityOptions, "max_memory").help)(f)


def full_length_option(f):
    """extend's --full-length (its parity group), for verify."""
    from ropeconv.extend.options import ParityOptions
    from ropeconv.optionfields import spec_of

    return click.option("--full-length", is_flag=True, default=None, help=spec_of(ParityOptions, "full_length").help)(f)


def emit_json(data: Any, published: object = None) -> None:
    """The --json document on stdout; `published`: the output already in place (a failed write then says so)."""
    from ropeconv.cli.report import echo_published

    text = jsontext.dumps(data, "--json output", indent=2, sort_keys=True, default=str)
    if published is None:
        click.echo(text)
    else:
        echo_published(text, published)


def all_method_options() -> dict[str, Option]:
    """Union of every method's options; one flag per name."""
    found: dict[str, Option] = {}
    for m in methods.ordered():
        for opt in m.OPTIONS:
            found.setdefault(opt.name, opt)
    return found


def method_option_decorators():
    decorators = []
    for opt in all_method_options().values():
        # one flag may serve several methods, each with its own default: show each method's help
        helps: dict[str, list[str]] = {}
        for m in methods.ordered():
            for o in m.OPTIONS:
                if o.name == opt.name:
                    helps.setdefault(o.help, []).append(m.NAME)
        help_text = "; ".join(f"[{', '.join(users)}] {text}" for text, users in helps.items())
        if opt.kind is bool:
            flag = opt.flag[2:]
            decorators.append(click.option(f"--{flag}/--no-{flag}", opt.name, default=None, help=help_text))
        elif opt.kind is Path:
            decorators.append(click.option(opt.flag, opt.name, type=PATH, help=help_text))
        else:
            decorators.append(click.option(opt.flag, opt.name, type=opt.kind, help=help_text))
    return decorators


def method_options_for(method_name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The given method options, refusing any that the chosen method does not take."""
    module = methods.get(method_name)
    accepted = {o.name for o in module.OPTIONS}
    options = {}
    for name, value in given.items():
        if value is None:
            continue
        if name not in accepted:
            flag = "--" + name.replace("_", "-")
            raise InputError(f"{flag} does not apply to --method {method_name}")
        options[name] = value
    return options
