"""The docs a newcomer reads hold no dead ends: every relative link (file and #anchor) in README.md and docs/*.md
resolves, and every flag they show on a `ropeconv …` command line is one that command takes."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from ropeconv.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
# a command line: `ropeconv CMD` or `python -m ropeconv.cli.main CMD`, continued over lines ending in a backslash
COMMAND = re.compile(r"(?:\bropeconv|ropeconv\.cli\.main)\s+([a-z][\w-]*)((?:[^\n`]|\\\n)*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(FENCE.sub("", page.read_text(encoding="utf-8")))
            if not re.match(r"[a-z]+:", m.group(1))]  # http:, https:, mailto:


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_resolves(page):
    assert page.is_file()
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def _command(name: str, rest: str) -> tuple[click.Command, str] | None:
    """The click command a doc line names and the text after it (a group's subcommand resolved)."""
    command = cli.get_command(click.Context(cli), name)
    if command is None:
        return None
    if isinstance(command, click.Group):
        sub = re.match(r"\s*([a-z][\w-]*)", rest)
        inner = command.get_command(click.Context(command), sub.group(1)) if sub else None
        if inner is None:
            return command, rest
        return inner, rest[sub.end():]
    return command, rest


def _flags(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}


def test_every_flag_named_on_a_command_line_exists():
    unknown, seen = [], 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in COMMAND.finditer(text):
            found = _command(m.group(1), m.group(2))
            if found is None:
                if m.group(1) in cli.list_commands(click.Context(cli)):
                    unknown.append(f"{page.name}: ropeconv {m.group(1)}")
                continue
            command, rest = found
            takes = _flags(command)
            for flag in FLAG.findall(rest.split("#")[0]):  # a shell comment after the command is prose
                seen += 1
                if flag not in takes:
                    unknown.append(f"{page.name}: `ropeconv {m.group(1)} … {flag}`")
    assert seen > 50, f"only {seen} flags found on command lines: the pattern no longer reads the docs"
    assert not unknown, "flags the docs name that the command does not take: " + "; ".join(sorted(set(unknown)))


def test_the_checks_can_fail(tmp_path):
    """A made-up flag and a link to a missing page are found (the checks above are not vacuous)."""
    command, rest = _command("extend", " BASE --method yarn --no-such-flag -o out/")
    assert "--no-such-flag" not in _flags(command) and "--method" in _flags(command)
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nsee [there](missing.md) and [here](#title) and [web](https://example.org)\n")
    assert links(page) == ["missing.md", "#title"] and "title" in anchors(page)
