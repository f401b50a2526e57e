"""Shared option parsing: byte sizes, JSON output, and method options built from the method modules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from ropeconv import jsontext
from ropeconv import methods
from ropeconv.errors import InputError
from ropeconv.methods.base import Option

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4,
          "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}  # fmt: skip


def parse_bytes(flag: str, text: str) -> int:
    match = _SIZE.match(text)
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise InputError(f"{flag} {text!r}: expected a size like 5GB, 500MB or 2GiB")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise InputError(f"{flag} must be positive")
    return value


def emit_json(data: Any) -> None:
    click.echo(jsontext.dumps(data, "--json output", indent=2, sort_keys=True, default=str))


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
            decorators.append(click.option(opt.flag, opt.name, type=click.Path(path_type=Path), help=help_text))
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
